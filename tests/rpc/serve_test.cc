// The server as clients see it: a real `mpirun -np 2 tessera serve` job driven through the real
// gRPC client. Concurrency against `tessera run`, cancellation, deadlines, validation, auth,
// drain on SIGTERM, a dead rank, and a load test.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <fstream>
#include <functional>
#include <mutex>
#include <random>
#include <set>

#include <gtest/gtest.h>

#include "nlohmann/json.hpp"
#include "tests/rpc/server_harness.h"

namespace tessera {
namespace {

using testing::ServerJob;
const std::string kFixture = std::string(TESSERA_SOURCE_DIR) + "/tests/golden/fixtures/dense_gqa";
const std::string kMoeFixture =
    std::string(TESSERA_SOURCE_DIR) + "/tests/golden/fixtures/moe_norm_topk";

v1::GenerateRequest Greedy(const std::vector<int32_t>& prompt, int max_tokens) {
  v1::GenerateRequest r;
  for (int32_t id : prompt) r.add_prompt_token_ids(id);
  r.set_max_tokens(max_tokens);
  r.mutable_sampling()->set_temperature(0.0f);
  return r;
}

struct Result {
  grpc::Status status;
  std::vector<int32_t> tokens;
  std::string text;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  int chunks = 0;
};

Result Generate(Client& client, const v1::GenerateRequest& request) {
  Result result;
  result.status = client.Generate(request, [&](const v1::GenerateResponse& r) {
    ++result.chunks;
    result.tokens.insert(result.tokens.end(), r.token_ids().begin(), r.token_ids().end());
    result.text += r.text();
    if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) result.finish = r.finish_reason();
  });
  return result;
}

// `tessera run`'s greedy tokens for a prompt (one process).
std::vector<int32_t> RunOffline(const std::vector<int32_t>& prompt, int max_tokens,
                                const std::string& model = kFixture) {
  std::string ids;
  for (size_t i = 0; i < prompt.size(); ++i) ids += (i ? "," : "") + std::to_string(prompt[i]);
  const std::string cmd = std::string(TESSERA_BINARY) + " run --model " + model + " --prompt-ids " +
                          ids + " --max-new-tokens " + std::to_string(max_tokens) +
                          " --temperature 0 --json";
  FILE* pipe = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  while (fgets(buf, sizeof(buf), pipe)) out += buf;
  EXPECT_EQ(pclose(pipe), 0) << cmd;
  return nlohmann::json::parse(out)["tokens"].get<std::vector<int32_t>>();
}

std::vector<int32_t> RandomPrompt(std::mt19937& rng, int len) {
  std::uniform_int_distribution<int32_t> id(0, 383);
  std::vector<int32_t> p(len);
  for (auto& x : p) x = id(rng);
  return p;
}

// Generates every prompt greedily on its own client thread, all at once; results in prompt order.
std::vector<Result> GenerateConcurrently(ServerJob& job,
                                         const std::vector<std::vector<int32_t>>& prompts,
                                         const std::vector<int>& lengths) {
  std::vector<Result> results(prompts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back([&, i] {
      auto client = job.MakeClient();
      results[i] = Generate(*client, Greedy(prompts[i], lengths[i]));
    });
  }
  for (auto& t : threads) t.join();
  return results;
}

// `count` greedy streams at once through a 2-rank `tessera serve --model model <flags>` job, each
// equal to `tessera run` on `model`: stream i has a random prompt (drawn from `seed`) of
// prompt_len(i) tokens and asks for max_tokens(i) tokens. `also(i, result)`, if given, checks
// more of each result.
void ExpectConcurrentStreamsEqualOffline(
    const std::string& model, std::vector<std::string> flags, unsigned seed, int count,
    const std::function<int(int)>& prompt_len, const std::function<int(int)>& max_tokens,
    const std::function<void(int, const Result&)>& also = nullptr) {
  flags.insert(flags.begin(), {"--model", model});
  ServerJob job(2, flags);
  std::mt19937 rng(seed);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int> lengths;
  for (int i = 0; i < count; ++i) {
    prompts.push_back(RandomPrompt(rng, prompt_len(i)));
    lengths.push_back(max_tokens(i));
  }
  const std::vector<Result> results = GenerateConcurrently(job, prompts, lengths);
  for (int i = 0; i < count; ++i) {
    ASSERT_TRUE(results[i].status.ok())
        << i << ": " << results[i].status.error_message() << "\nserver log:\n"
        << job.Log();
    EXPECT_EQ(results[i].tokens, RunOffline(prompts[i], lengths[i], model)) << "stream " << i;
    if (also) also(i, results[i]);
  }
}

TEST(ServeTest, ConcurrentStreamsEqualOfflineGreedy) {
  const auto length = [](int i) { return 4 + i % 9; };
  ExpectConcurrentStreamsEqualOffline(
      kFixture, {"--max-num-batched-tokens", "64"}, /*seed=*/1, /*count=*/32,
      [](int i) { return 3 + (i * 7) % 40; }, length,
      [&](int i, const Result& r) {
        EXPECT_EQ(r.finish, v1::FINISH_REASON_LENGTH) << "stream " << i;
        // One chunk per token: streamed, not batched up.
        EXPECT_EQ(r.chunks, length(i)) << "stream " << i;
      });
}

// Attention DP2 x EP2: both replicas busy with different token counts in most steps, so the
// expert exchange pads unequal slices (and empty ones when a replica idles).
TEST(ServeTest, ExpertParallelReplicasEqualOfflineGreedy) {
  ExpectConcurrentStreamsEqualOffline(
      kMoeFixture, {"--ep", "2", "--max-num-batched-tokens", "32"}, /*seed=*/2, /*count=*/8,
      [](int i) { return 2 + (i * 11) % 37; }, [](int i) { return 3 + i % 5; });
}

// Async scheduling (the default) against --no-async-scheduling at TP2: each step's decode inputs
// come from the previous step's ids, sampled on both TP ranks alike; greedy and seeded sampling
// must give the same tokens either way, and greedy the offline tokens.
TEST(ServeTest, AsyncSchedulingGivesTheSynchronousTokens) {
  std::mt19937 rng(9);
  constexpr int kStreams = 12;
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < kStreams; ++i) {
    v1::GenerateRequest r = Greedy(RandomPrompt(rng, 3 + (i * 5) % 30), 5 + i % 7);
    if (i % 2 == 1) {
      r.mutable_sampling()->set_temperature(0.9f);
      r.mutable_sampling()->set_seed(40 + i);
    }
    requests.push_back(r);
  }
  std::vector<std::vector<Result>> runs;
  for (const char* flag : {"--async-scheduling", "--no-async-scheduling"}) {
    ServerJob job(
        2, {"--model", kFixture, "--dp", "1", "--tp", "2", "--max-num-batched-tokens", "32", flag});
    std::vector<Result> results(kStreams);
    std::vector<std::thread> threads;
    for (int i = 0; i < kStreams; ++i) {
      threads.emplace_back([&, i] {
        auto client = job.MakeClient();
        results[i] = Generate(*client, requests[i]);
      });
    }
    for (auto& t : threads) t.join();
    for (int i = 0; i < kStreams; ++i) {
      ASSERT_TRUE(results[i].status.ok())
          << flag << " " << i << ": " << results[i].status.error_message() << "\nserver log:\n"
          << job.Log();
    }
    runs.push_back(std::move(results));
  }
  for (int i = 0; i < kStreams; ++i) {
    EXPECT_EQ(runs[0][i].tokens, runs[1][i].tokens) << "stream " << i;
    if (i % 2 == 1) continue;
    const auto& ids = requests[i].prompt_token_ids();
    EXPECT_EQ(runs[0][i].tokens,
              RunOffline(std::vector<int32_t>(ids.begin(), ids.end()), requests[i].max_tokens()))
        << "stream " << i;
  }
}

// Pipeline stages keep synchronous steps (async scheduling is on by default): concurrent streams
// over PP2 with chunked prefill give the offline tokens.
TEST(ServeTest, PipelineStagesGiveTheOfflineTokens) {
  ExpectConcurrentStreamsEqualOffline(
      kFixture, {"--pp", "2", "--max-num-batched-tokens", "32"}, /*seed=*/11, /*count=*/8,
      [](int i) { return 3 + (i * 9) % 40; }, [](int i) { return 4 + i % 6; });
}

TEST(ServeTest, PrefixCacheReusesBlocksAndGivesTheSameTokens) {
  ServerJob job(2, {"--model", kFixture, "--dp", "1", "--tp", "2"});
  std::mt19937 rng(5);
  const std::vector<int32_t> prompt = RandomPrompt(rng, 70);  // 4 full blocks of 16 + 6
  auto client = job.MakeClient();
  std::vector<v1::GenerateResponse> last(2);
  std::vector<std::vector<int32_t>> tokens(2);
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(client
                    ->Generate(Greedy(prompt, 8),
                               [&](const v1::GenerateResponse& r) {
                                 tokens[i].insert(tokens[i].end(), r.token_ids().begin(),
                                                  r.token_ids().end());
                                 last[i] = r;
                               })
                    .ok());
  }
  EXPECT_EQ(last[0].usage().cached_tokens(), 0u);
  EXPECT_EQ(last[1].usage().cached_tokens(), 64u);
  EXPECT_EQ(tokens[0], tokens[1]);
  EXPECT_EQ(tokens[0], RunOffline(prompt, 8));
  EXPECT_EQ(job.Metric("tessera:prefix_cache_hit_tokens_total"), 64);
}

TEST(ServeTest, StopTokensAndLogprobs) {
  ServerJob job(2, {"--model", kFixture});
  auto client = job.MakeClient();
  const std::vector<int32_t> prompt = {10, 20, 30, 40};
  const std::vector<int32_t> full = RunOffline(prompt, 8);
  v1::GenerateRequest r = Greedy(prompt, 8);
  r.add_stop_token_ids(full[3]);
  Result res = Generate(*client, r);
  ASSERT_TRUE(res.status.ok());
  EXPECT_EQ(res.finish, v1::FINISH_REASON_STOP);
  // Stops at the first occurrence of the stop id, which is included in token_ids.
  const size_t first = std::find(full.begin(), full.end(), full[3]) - full.begin();
  EXPECT_EQ(res.tokens, std::vector<int32_t>(full.begin(), full.begin() + first + 1));

  v1::GenerateRequest lp = Greedy(prompt, 3);
  lp.set_logprobs(5);
  std::vector<v1::TokenLogprobs> seen;
  ASSERT_TRUE(client
                  ->Generate(lp,
                             [&](const v1::GenerateResponse& resp) {
                               seen.insert(seen.end(), resp.logprobs().begin(),
                                           resp.logprobs().end());
                             })
                  .ok());
  ASSERT_EQ(seen.size(), 3u);
  for (size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].token_id(), full[i]);
    ASSERT_EQ(seen[i].top_size(), 5);
    EXPECT_EQ(seen[i].top(0).token_id(), full[i]);  // greedy: the chosen token is the most likely
    EXPECT_LE(seen[i].logprob(), 0.0f);
    for (int k = 1; k < 5; ++k) EXPECT_LE(seen[i].top(k).logprob(), seen[i].top(k - 1).logprob());
  }
}

TEST(ServeTest, TextAndChatWithTheRealTokenizer) {
  // The embedded model: tiny random weights, Qwen3's real tokenizer and chat template.
  ServerJob job(2, {});
  auto client = job.MakeClient();
  v1::GenerateRequest text;
  text.set_prompt("The capital of France is");
  text.set_max_tokens(12);
  text.mutable_sampling()->set_temperature(0.0f);
  text.set_ignore_eos(true);
  Result res = Generate(*client, text);
  ASSERT_TRUE(res.status.ok()) << res.status.error_message();
  ASSERT_EQ(res.tokens.size(), 12u);
  // The streamed text is exactly the detokenised ids (Tokenize round trip through the server).
  v1::TokenizeRequest tok;
  tok.set_text("The capital of France is");
  v1::TokenizeResponse ids;
  ASSERT_TRUE(client->Tokenize(tok, &ids).ok());
  EXPECT_GT(ids.token_ids_size(), 3);
  std::string detok_cmd = std::string(TESSERA_BINARY) + " detokenize --tokenizer " +
                          std::string(TESSERA_SOURCE_DIR) +
                          "/tests/data/qwen3/tokenizer-qwen3-0.6b --json --ids ";
  for (size_t i = 0; i < res.tokens.size(); ++i)
    detok_cmd += (i ? "," : "") + std::to_string(res.tokens[i]);
  FILE* pipe = popen(detok_cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  while (fgets(buf, sizeof(buf), pipe)) out += buf;
  pclose(pipe);
  EXPECT_EQ(res.text, nlohmann::json::parse(out)["text"].get<std::string>());

  v1::GenerateRequest chat;
  auto* m = chat.add_messages();
  m->set_role("user");
  m->set_content("Hi!");
  chat.set_enable_thinking(false);
  chat.set_max_tokens(6);
  Result chat_res = Generate(*client, chat);
  ASSERT_TRUE(chat_res.status.ok()) << chat_res.status.error_message();
  EXPECT_FALSE(chat_res.tokens.empty());

  v1::GenerateRequest deep = chat;
  auto* call = deep.add_messages();
  call->set_role("assistant");
  auto* tool_call = call->add_tool_calls();
  tool_call->set_name("f");
  tool_call->set_arguments(std::string(100000, '[') + std::string(100000, ']'));
  Result deep_res = Generate(*client, deep);
  EXPECT_EQ(deep_res.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << job.Log();
  EXPECT_NE(deep_res.status.error_message().find("nests deeper"), std::string::npos)
      << deep_res.status.error_message();

  v1::GenerateRequest bad_utf8;
  bad_utf8.set_prompt(std::string("caf\xc3", 4));
  bad_utf8.set_max_tokens(2);
  Result bad = Generate(*client, bad_utf8);
  EXPECT_EQ(bad.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << bad.status.error_message();
  EXPECT_EQ(bad.status.error_message(), "prompt is not valid UTF-8 (at byte 3)");
}

TEST(ServeTest, ValidationErrorsSayWhy) {
  ServerJob job(2, {"--model", kFixture});
  auto client = job.MakeClient();
  auto expect = [&](v1::GenerateRequest r, const std::string& needle) {
    Result res = Generate(*client, r);
    EXPECT_EQ(res.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << needle;
    EXPECT_NE(res.status.error_message().find(needle), std::string::npos)
        << res.status.error_message();
  };
  v1::GenerateRequest empty;
  empty.set_max_tokens(4);
  expect(empty, "prompt is empty");
  expect(Greedy({1, 384, 2}, 4), "outside the vocabulary");
  expect(Greedy({1, -1}, 4), "outside the vocabulary");
  expect(Greedy({1, 2}, 600), "exceeds the context window (512)");
  expect(Greedy({1, 2}, 0), "max_tokens");
  v1::GenerateRequest r = Greedy({1, 2}, 4);
  r.mutable_sampling()->set_temperature(NAN);
  expect(r, "temperature");
  r.mutable_sampling()->set_temperature(-0.5f);
  expect(r, "temperature");
  r = Greedy({1, 2}, 4);
  r.mutable_sampling()->set_top_p(0.0f);
  expect(r, "top_p");
  r.mutable_sampling()->set_top_p(1.5f);
  expect(r, "top_p");
  r = Greedy({1, 2}, 4);
  r.set_prompt("text");  // two inputs at once
  expect(r, "exactly one");
  v1::GenerateRequest text;
  text.set_prompt("hello");
  text.set_max_tokens(2);
  expect(text, "no tokenizer");  // the fixture has none
  // The server keeps serving after all of that.
  EXPECT_TRUE(Generate(*client, Greedy({5, 6, 7}, 3)).status.ok());
}

TEST(ServeTest, FullQueueIsResourceExhausted) {
  ServerJob job(2, {"--model", kFixture, "--max-queue", "2"});
  std::atomic<int> started{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      auto client = job.MakeClient();
      v1::GenerateRequest r = Greedy({1, 2, static_cast<int32_t>(i)}, 300);
      r.set_ignore_eos(true);
      bool first = true;
      client->Generate(r, [&](const v1::GenerateResponse&) {
        if (first) ++started;
        first = false;
      });
    });
  }
  while (started < 2) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  auto client = job.MakeClient();
  Result full = Generate(*client, Greedy({1, 2}, 2));
  EXPECT_EQ(full.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << full.status.error_message();
  for (auto& t : threads) t.join();
  EXPECT_TRUE(Generate(*client, Greedy({1, 2}, 2)).status.ok());  // room again
}

TEST(ServeTest, ARankFailingAtStartEndsTheJob) {
  setenv("TESSERA_FAULT", "fail-load@1", 1);
  ServerJob job(2, {"--model", kFixture}, /*expect_ready=*/false);
  unsetenv("TESSERA_FAULT");
  const int code = job.Wait(std::chrono::seconds(30));
  EXPECT_NE(code, 0);
  EXPECT_NE(code, -1) << "the job did not end";
  EXPECT_NE(job.Log().find("[rank 1] injected load failure"), std::string::npos) << job.Log();
  EXPECT_FALSE(job.ready());
}

TEST(ServeTest, CancellationFreesKvBlocks) {
  ServerJob job(2, {"--model", kFixture, "--num-kv-blocks", "64"});
  const double idle = job.Metric("tessera:kv_cache_free_blocks");
  ASSERT_EQ(idle, 128);  // 64 per replica, 2 replicas
  grpc::ClientContext context;
  v1::GenerateRequest r = Greedy({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17}, 400);
  r.set_ignore_eos(true);
  ClientOptions options;
  options.address = job.address();
  auto channel = grpc::CreateChannel(job.address(), grpc::InsecureChannelCredentials());
  auto stub = v1::Generation::NewStub(channel);
  auto reader = stub->Generate(&context, r);
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));  // generating now, holding blocks
  EXPECT_LT(job.Metric("tessera:kv_cache_free_blocks"), idle);
  context.TryCancel();
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  double free = -1;
  for (int i = 0; i < 100 && free != idle; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    free = job.Metric("tessera:kv_cache_free_blocks");
  }
  EXPECT_EQ(free, idle);
}

TEST(ServeTest, DeadlineExceeded) {
  ServerJob job(2, {"--model", kFixture});
  ClientOptions options;
  options.address = job.address();
  options.timeout = std::chrono::milliseconds(40);
  Client client(options);
  v1::GenerateRequest r = Greedy({1, 2, 3}, 500);
  r.set_ignore_eos(true);
  // It cannot finish in 40 ms: 500 steps of two ranks exchanging plans and logits take longer.
  Result res = Generate(client, r);
  EXPECT_EQ(res.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << res.status.error_message();
  // The server is fine afterwards, and the KV is back.
  auto fresh = job.MakeClient();
  EXPECT_TRUE(Generate(*fresh, Greedy({1, 2}, 2)).status.ok());
}

TEST(ServeTest, ApiKey) {
  ServerJob job(2, {"--model", kFixture, "--api-key", "s3cret"});
  auto anonymous = job.MakeClient();
  EXPECT_EQ(Generate(*anonymous, Greedy({1, 2}, 2)).status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  auto wrong = job.MakeClient("nope");
  EXPECT_EQ(Generate(*wrong, Greedy({1, 2}, 2)).status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  v1::ModelInfo info;
  EXPECT_EQ(anonymous->GetModelInfo(&info).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  auto good = job.MakeClient("s3cret");
  EXPECT_TRUE(Generate(*good, Greedy({1, 2}, 2)).status.ok());
  ASSERT_TRUE(good->GetModelInfo(&info).ok());
  EXPECT_EQ(info.world_size(), 2u);
  // Health stays open to probes that carry no key.
  std::string state;
  ASSERT_TRUE(anonymous->Health("", &state).ok());
  EXPECT_EQ(state, "SERVING");
}

TEST(ServeTest, Tls) {
  const std::string dir = ::testing::TempDir() + "/tls-" + std::to_string(getpid());
  const std::string make_cert =
      "mkdir -p " + dir +
      " && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost"
      " -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
      dir + "/key.pem -out " + dir + "/cert.pem 2>/dev/null";
  ASSERT_EQ(std::system(make_cert.c_str()), 0);
  ServerJob job(
      2, {"--model", kFixture, "--tls-cert", dir + "/cert.pem", "--tls-key", dir + "/key.pem"});
  ClientOptions options;
  options.address = job.address();
  options.tls_ca = dir + "/cert.pem";
  Client secure(options);
  EXPECT_TRUE(Generate(secure, Greedy({1, 2}, 2)).status.ok());
  auto plaintext = job.MakeClient();  // a client without TLS cannot talk to it
  EXPECT_EQ(Generate(*plaintext, Greedy({1, 2}, 2)).status.error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

TEST(ServeTest, SigtermDrainsLiveStreamsThenExitsZero) {
  ServerJob job(2, {"--model", kFixture, "--drain-timeout", "60"});
  std::atomic<int> started{0};
  std::vector<Result> results(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      auto client = job.MakeClient();
      v1::GenerateRequest r = Greedy({1, 2, 3, static_cast<int32_t>(i)}, 150);
      r.set_ignore_eos(true);
      results[i].status = client->Generate(r, [&](const v1::GenerateResponse& resp) {
        if (results[i].tokens.empty()) ++started;
        results[i].tokens.insert(results[i].tokens.end(), resp.token_ids().begin(),
                                 resp.token_ids().end());
        if (resp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED)
          results[i].finish = resp.finish_reason();
      });
    });
  }
  while (started < 4) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(kill(job.rank0_pid(), SIGTERM), 0);
  // Health turns NOT_SERVING at once, and new requests are refused.
  auto probe = job.MakeClient();
  std::string state;
  for (int i = 0; i < 50; ++i) {
    if (probe->Health("", &state).ok() && state == "NOT_SERVING") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(state, "NOT_SERVING");
  EXPECT_EQ(Generate(*probe, Greedy({1, 2}, 2)).status.error_code(), grpc::StatusCode::UNAVAILABLE);
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    EXPECT_EQ(results[i].tokens.size(), 150u);
    EXPECT_EQ(results[i].finish, v1::FINISH_REASON_LENGTH);
  }
  EXPECT_EQ(job.Wait(std::chrono::seconds(30)), 0) << job.Log();
}

TEST(ServeTest, KillingOneRankFailsStreamsWithUnavailableAndEndsTheJob) {
  ServerJob job(2, {"--model", kFixture, "--collective-timeout", "3"});
  // Rank 1's pid: mpirun's other tessera child.
  const std::string cmd = "pgrep -P " + std::to_string(job.mpirun_pid()) + " -f 'tessera serve'";
  FILE* pipe = popen(cmd.c_str(), "r");
  std::vector<int> pids;
  int pid;
  while (fscanf(pipe, "%d", &pid) == 1) pids.push_back(pid);
  pclose(pipe);
  int rank1 = -1;
  for (int p : pids) {
    if (p != job.rank0_pid() && p != job.mpirun_pid()) rank1 = p;
  }
  ASSERT_GT(rank1, 0);
  std::atomic<int> started{0};
  std::vector<Result> results(3);
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      auto client = job.MakeClient();
      v1::GenerateRequest r = Greedy({4, 5, static_cast<int32_t>(i)}, 450);
      r.set_ignore_eos(true);
      results[i].status = client->Generate(r, [&](const v1::GenerateResponse&) {
        if (results[i].chunks++ == 0) ++started;
      });
    });
  }
  while (started < 3) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(rank1, SIGKILL), 0);
  for (auto& t : threads) t.join();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(results[i].status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << results[i].status.error_message();
  }
  const int code = job.Wait(std::chrono::seconds(30));
  EXPECT_NE(code, 0);
  EXPECT_NE(code, -1) << "the job did not end";
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

TEST(ServeTest, LoadTestZeroErrorsKvBackToIdleMemoryFlat) {
  // 40 blocks of 16 per replica: 16 clients' requests (up to 144 tokens each) do not all fit, so
  // the scheduler must preempt and recompute.
  ServerJob job(2,
                {"--model", kFixture, "--num-kv-blocks", "40", "--max-num-batched-tokens", "256"});
  const double idle = job.Metric("tessera:kv_cache_free_blocks");
  auto run_wave = [&](int requests, int seed) {
    std::atomic<int> next{0}, errors{0};
    std::vector<std::thread> threads;
    for (int w = 0; w < 16; ++w) {
      threads.emplace_back([&, w] {
        auto client = job.MakeClient();
        std::mt19937 rng(seed * 100 + w);
        for (int i = next++; i < requests; i = next++) {
          v1::GenerateRequest r = Greedy(RandomPrompt(rng, 1 + rng() % 120), 1 + rng() % 24);
          if (i % 3 == 0) {
            r.mutable_sampling()->set_temperature(0.8f);
            r.mutable_sampling()->set_top_p(0.9f);
          }
          Result res = Generate(*client, r);
          if (!res.status.ok() || res.tokens.empty()) ++errors;
        }
      });
    }
    for (auto& t : threads) t.join();
    return errors.load();
  };
  EXPECT_EQ(run_wave(60, 1), 0);  // warm-up: allocator pools, gRPC threads
  const long rss_before = job.Rss();
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(run_wave(300, 2), 0);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const long rss_after = job.Rss();
  std::printf(
      "[load] 300 requests in %.2f s (%.1f req/s); rank 0 RSS %ld -> %ld KiB; preemptions %g\n",
      seconds, 300 / seconds, rss_before, rss_after, job.Metric("tessera:num_preemptions_total"));
  double free = -1;
  for (int i = 0; i < 100 && free != idle; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    free = job.Metric("tessera:kv_cache_free_blocks");
  }
  EXPECT_EQ(free, idle);
  EXPECT_EQ(job.Metric("tessera:num_requests_running"), 0);
  EXPECT_GT(job.Metric("tessera:num_preemptions_total"), 0);
  EXPECT_LT(rss_after - rss_before, 32 * 1024)
      << "rank 0 grew by " << (rss_after - rss_before) << " KiB";
}

}  // namespace
}  // namespace tessera
