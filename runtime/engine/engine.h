// The serving engine: continuous batching over the paged KV cache (runtime/engine/ENGINE.md is its
// binding contract).
//
// Runs on rank 0, on the thread that initialised MPI: Run() is the step loop. Other threads (the
// gRPC handlers) call Submit() and Cancel() and read each request's RequestStream. Each step the
// engine admits, schedules (decodes first, then prefill chunks, within a token budget), builds
// one StepPlan for every rank, executes it, samples, detokenises and streams the results.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/engine/block_manager.h"
#include "runtime/engine/executor.h"
#include "runtime/engine/metrics.h"
#include "runtime/engine/sampler.h"
#include "runtime/engine/step_trace.h"
#include "runtime/text/chat/output_parser.h"
#include "runtime/text/tokenizer/tokenizer.h"

namespace tessera {

enum class FinishReason { kNone, kStop, kLength, kCancelled, kError };
const char* FinishReasonName(FinishReason reason);  // "stop", "length", "cancelled", "error"

// The most alternatives a request may ask log-probabilities for (EngineRequest::top_logprobs).
constexpr int kMaxTopLogprobs = 20;

struct EngineRequest {
  std::string request_id;  // unique among requests in flight
  std::vector<int32_t> prompt;
  int max_tokens = 16;
  SamplingParams sampling;
  std::vector<std::string> stop;        // stop strings (not included in the output)
  std::vector<int32_t> stop_token_ids;  // stop ids (included in token_ids, not in text)
  bool ignore_eos = false;
  int top_logprobs = -1;  // < 0: none; 0: the chosen token's; n: and the n most likely
  bool skip_special_tokens = true;
  // Set for chat requests: split reasoning / content / tool calls out of the text.
  std::optional<ChatOutputParser::Options> parse_chat;
  int priority = 0;  // lower is served first; FCFS within a priority
  std::optional<std::chrono::steady_clock::time_point> deadline;
  // Siblings of one request with `n` > 1 (the same prompt) share a non-empty group: the engine
  // admits the first and holds the others until its prompt's full blocks are in the prefix
  // cache, so the prompt is computed once (ENGINE.md, "Admission").
  std::string prompt_group;
  std::string origin;  // the front end that sent it ("grpc", "http"): for request logs only
};

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0;
};

struct TokenLogprobs {
  TokenLogprob chosen;
  std::vector<TokenLogprob> top;
};

// One streamed chunk. The last one of a request has `finished` set.
struct EngineOutput {
  std::vector<int32_t> token_ids;
  std::string text;       // content delta (UTF-8, whole characters)
  std::string reasoning;  // reasoning delta (chat requests)
  std::vector<ToolCall> tool_calls;
  std::vector<TokenLogprobs> logprobs;
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  absl::Status status;  // non-OK with kError: DEADLINE_EXCEEDED, UNAVAILABLE, INTERNAL
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;  // prompt tokens served from the prefix cache
};

// A request's outputs, from the engine thread to its reader. Readers either poll (Next) or are
// told (SetListener): the listener runs on the pushing thread (the engine's) after each output is
// queued, so it must return at once without blocking (post work elsewhere, never wait).
// The buffer is bounded: a reader that falls `max_buffered` outputs behind has its request ended
// by the engine (RESOURCE_EXHAUSTED); the last output of a request is always queued.
class RequestStream {
 public:
  explicit RequestStream(size_t max_buffered = SIZE_MAX) : max_buffered_(max_buffered) {}

  enum class PushResult { kQueued, kFull, kClosed };
  // kFull: not queued (buffer full and `output` not the last); kClosed: the request had ended.
  PushResult Push(EngineOutput output);
  // Waits up to `timeout` for the next output; false if none came.
  bool Next(EngineOutput* output, std::chrono::milliseconds timeout);
  // The next output if one is queued; never waits.
  bool TryNext(EngineOutput* output);
  // Calls `listener` after every later Push that queues an output, and once now if outputs are
  // already queued. Set it once, before relying on it; an empty function removes it.
  void SetListener(std::function<void()> listener);

 private:
  const size_t max_buffered_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<EngineOutput> queue_;
  bool closed_ = false;
  std::shared_ptr<std::function<void()>> listener_;
};

struct EngineOptions {
  int max_num_seqs = 256;             // sequences in the running batch, per replica
  int max_num_batched_tokens = 2048;  // tokens per step, per replica (chunked prefill)
  // > 0: a prefill takes at most this many tokens per step (its chunks), so a long prompt shares
  // steps with the decodes instead of stalling them for a whole-prompt step; 0 = the budget.
  int long_prefill_token_threshold = 0;
  int max_queue = 4096;  // requests admitted but not finished
  bool enable_prefix_caching = true;
  int64_t max_model_len = 0;     // prompt + max_tokens limit; 0 = max_position_embeddings
  int64_t sampleable_vocab = 0;  // ids >= this are never sampled; 0 = the whole vocabulary
  std::vector<int32_t> eos_token_ids;
  uint64_t seed = 0;  // for requests without a seed
  // Outputs a request's reader may fall behind before the request is ended (RESOURCE_EXHAUSTED).
  size_t max_buffered_outputs = 4096;
  // Fault injection (tests; TESSERA_FAULT in `tessera serve`): once this many forward steps have
  // run (< 0: never), `fault` runs on the step loop's thread before the next step (cuda-error);
  // without `fault` the loop stalls for good: no more steps or heartbeats, though Stop() still
  // ends it (stall-step).
  int64_t fault_after_steps = -1;
  std::function<void()> fault;
  // Request logs (serve --log-requests), called on the engine thread (the finish, with async
  // output, on its output thread): once when a request is taken in, once when it ends (its last
  // output, the time to its first token, < 0 if none came, and its end-to-end time, in seconds).
  // They must return at once.
  std::function<void(const EngineRequest&)> on_request_arrival;
  std::function<void(const EngineRequest&, const EngineOutput& last, double ttft_s, double e2e_s)>
      on_request_finish;
  // The step timeline (runtime/engine/step_trace.h): "" = none; else the last
  // `step_trace_steps` forward steps are written to this file when Run() returns.
  std::string step_trace_path;
  int64_t step_trace_steps = 20000;
  // Output work (detokenising, stop strings, the output parser, stream pushes and their
  // listeners) on the engine's output thread, overlapping the next step's forward. A stop string
  // is then seen one step late: the sequence's token of that next step is discarded (its KV
  // written, never output). Ids-based ends (EOS, stop ids, max_tokens, the context) stay exact.
  bool async_output = true;
  // Async scheduling (serve --async-scheduling): with one pipeline stage, rank 0 schedules,
  // plans and launches step N+1 before it reads step N's sampled ids; N+1's decode inputs come
  // from N's ids on the device. Ends decided from ids (EOS, stop ids) are then seen one step
  // late: the sequence's token of N+1 is discarded (ENGINE.md, "Scheduling").
  bool async_scheduling = true;
};

// The largest step an Engine with `options` plans (per replica and micro-batch), for an executor
// of `num_kv_blocks` blocks of `block_size`: what the executor's workspace must be planned for
// (Executor::Load). Every rank computes it from the same flags.
StepLimits EngineStepLimits(const EngineOptions& options, const ModelConfig& config,
                            int num_kv_blocks, int block_size);

struct EngineStats {
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t free_blocks = 0;   // free or evictable, all replicas
  int64_t total_blocks = 0;  // all replicas
};

class Engine {
 public:
  // `tokenizer` may be null (token ids in, token ids out). `metrics` may be null.
  Engine(Executor& executor, const Tokenizer* tokenizer, Metrics* metrics, EngineOptions options);
  ~Engine();

  // Thread-safe. Validates the request (INVALID_ARGUMENT saying why), then queues it:
  // RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE while draining or stopped,
  // ALREADY_EXISTS for a request id already in flight.
  absl::StatusOr<std::shared_ptr<RequestStream>> Submit(EngineRequest request);
  // Thread-safe. The request ends with kCancelled and its KV blocks are freed within one step.
  void Cancel(const std::string& request_id);

  // The step loop, on the MPI thread of rank 0. Returns after Stop(); then tells the workers to
  // shut down.
  void Run();
  // Thread-safe: refuse new requests (in-flight ones go on).
  void BeginDrain();
  // Thread-safe: end Run() after the current step; requests still in flight end with `status`,
  // and the workers are told to shut down.
  void Stop(absl::Status status = absl::UnavailableError("the server is shutting down"));
  // Thread-safe, callable from any thread (the watchdog): ends every request in flight with
  // `status` now, whatever the step loop is doing. For a failed rank only: Run() then returns
  // without telling the workers to shut down (they cannot be reached).
  void FailAll(const absl::Status& status);

  // Thread-safe: time since the step loop last made progress: a step completed, or (idle) a
  // heartbeat every rank answered. The loop makes progress at least every second while healthy
  // (idle heartbeats), so a large value means a wedged loop or a hung rank.
  std::chrono::steady_clock::duration SinceProgress() const;

  EngineStats stats() const;
  int64_t in_flight() const;

 private:
  struct Sequence;
  struct Replica;
  struct OutputItem;
  // A launched step not yet collected: whose logit rows it has, whom it schedules.
  struct InFlight {
    StepRecord record;                 // its number and composition (as launched)
    std::vector<Sequence*> row_owner;  // [logit rows], plan order
    std::vector<Sequence*> scheduled;
    std::chrono::steady_clock::time_point launched;
  };

  absl::Status Validate(const EngineRequest& request) const;
  void Intake();
  bool Schedule(Replica& replica, std::vector<std::pair<Sequence*, int>>* scheduled);
  void Preempt(Replica& replica, Sequence* seq);
  // n > 1: the replica already holding a sibling of `seq` (-1: none), and whether `seq` must wait
  // for a running sibling to compute and register the prompt's full blocks.
  int SiblingReplica(const Sequence& seq) const;
  bool WaitsForSibling(const Replica& replica, const Sequence& seq) const;
  void Step(StepRecord* record);
  // Reads the oldest launched step's results: appends its tokens (Accept), then its output work.
  void CollectStep(StepRecord* record);
  // The engine thread's part of a new token: appends it, times it, decides the ids-based ends,
  // and queues its output work. `logits`: the row's logits for host-sampled rows, else null.
  void Accept(Sequence* seq, int32_t token, const float* logits);
  // Ends `seq` now on the engine thread (cancellation, deadline, shutdown): its blocks are freed
  // and its last output is queued behind its earlier ones.
  void End(Sequence* seq, FinishReason reason, absl::Status status);
  // Frees the sequence's blocks; it leaves the scheduler's lists at the next cleanup.
  void Release(Sequence* seq);
  // The output work of one item: text, stops, parser, stream push (output thread or engine).
  void ProcessOutput(OutputItem& item);
  void PushFinal(OutputItem& item, FinishReason reason, absl::Status status, EngineOutput out);
  // Hands the queued output work over (async) or does it now; then applies the ends it found.
  void FlushOutputs(int64_t step);
  // Waits for the output thread's batch, then frees what it ended (stop strings, slow readers).
  void JoinOutputs();
  void OutputLoop();
  void RemoveEnded();
  void UpdateGauges();

  Executor& executor_;
  const Tokenizer* tokenizer_;
  Metrics* metrics_;
  EngineOptions options_;
  int64_t vocab_ = 0;
  size_t max_stop_len_ = 0;

  mutable std::mutex mu_;  // guards the fields below it up to the replicas
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Sequence>> incoming_;
  std::set<std::string> cancelled_;
  std::map<std::string, std::shared_ptr<RequestStream>> live_;  // all requests in flight
  bool draining_ = false;
  bool stopping_ = false;
  bool failed_ = false;
  absl::Status stop_status_;

  // Engine thread only.
  std::vector<std::unique_ptr<Replica>> replicas_;
  uint64_t next_arrival_ = 0;
  int64_t steps_ = 0;                               // forward steps run
  std::unique_ptr<StepTrace> trace_;                // null without options_.step_trace_path
  std::vector<OutputItem> outputs_;                 // output work of this step, in order
  std::vector<std::unique_ptr<Sequence>> retired_;  // ended; freed once no output work names them
  std::vector<std::unique_ptr<Sequence>> limbo_;    // ended, named by a launched step
  std::deque<InFlight> in_flight_;  // launched, not collected (at most one between steps)
  std::chrono::steady_clock::time_point last_collected_;
  std::vector<std::unique_ptr<Sequence>> retired_handed_;  // freed when the output thread is done
  bool any_ended_ = false;                                 // some sequence in the lists has ended
  bool handed_ = false;                     // a batch is with the output thread, not joined
  std::map<std::string, Sequence*> by_id_;  // sequences in the lists, by request id
  // Deadlines in time order: (arrival, request id) of each request that has one; entries of
  // requests that ended before their deadline are skipped when they come up.
  std::multimap<std::chrono::steady_clock::time_point, std::pair<uint64_t, std::string>> deadlines_;

  // The output thread (async_output). out_mu_ guards the handover: the engine thread hands a
  // batch and later waits for it to be done; between the two only the output thread touches
  // the sequences' output state (detokenizer, parser, held text) and output_ended_.
  std::mutex out_mu_;
  std::condition_variable out_cv_;
  std::vector<OutputItem> out_batch_;
  int64_t out_step_ = -1;  // the step whose output work out_batch_ is
  bool out_busy_ = false, out_quit_ = false;
  int64_t out_begin_ns_ = 0, out_end_ns_ = 0, out_done_step_ = -1;
  std::vector<Sequence*> output_ended_;  // ended by their output work (stop string, full stream)
  std::thread out_thread_;
  std::atomic<int64_t> last_progress_ns_{0};  // steady_clock, since its epoch
  std::atomic<int64_t> running_count_{0}, waiting_count_{0}, free_blocks_{0}, total_blocks_{0};
};

}  // namespace tessera
