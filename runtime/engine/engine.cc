#include "runtime/engine/engine.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "kernels/base/check.h"
#include "runtime/engine/step_builder.h"

namespace tessera {

namespace {
using Clock = std::chrono::steady_clock;
constexpr auto kIdleHeartbeat = std::chrono::milliseconds(1000);

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Length of the longest prefix of `text` that ends on a UTF-8 character boundary.
size_t CharBoundary(const std::string& text, size_t limit) {
  size_t n = std::min(limit, text.size());
  while (n > 0 && n < text.size() && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
  return n;
}
}  // namespace

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return "none";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
  }
  return "?";
}

RequestStream::PushResult RequestStream::Push(EngineOutput output) {
  std::shared_ptr<std::function<void()>> listener;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return PushResult::kClosed;  // a request ends once
    if (!output.finished && queue_.size() >= max_buffered_) return PushResult::kFull;
    closed_ = output.finished;
    queue_.push_back(std::move(output));
    cv_.notify_all();
    listener = listener_;
  }
  if (listener) (*listener)();
  return PushResult::kQueued;
}

bool RequestStream::Next(EngineOutput* output, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, timeout, [this] { return !queue_.empty(); })) return false;
  *output = std::move(queue_.front());
  queue_.pop_front();
  return true;
}

bool RequestStream::TryNext(EngineOutput* output) {
  std::lock_guard<std::mutex> lock(mu_);
  if (queue_.empty()) return false;
  *output = std::move(queue_.front());
  queue_.pop_front();
  return true;
}

void RequestStream::SetListener(std::function<void()> listener) {
  std::shared_ptr<std::function<void()>> now;
  {
    std::lock_guard<std::mutex> lock(mu_);
    listener_ = listener ? std::make_shared<std::function<void()>>(std::move(listener)) : nullptr;
    if (!queue_.empty()) now = listener_;
  }
  if (now) (*now)();
}

struct Engine::Sequence {
  EngineRequest req;
  std::shared_ptr<RequestStream> stream;
  int replica = 0;
  uint64_t arrival = 0;
  Clock::time_point arrived, first_token, last_token;
  std::vector<int32_t> tokens;  // prompt, then generated
  int prompt_len = 0;
  int num_computed = 0;  // tokens whose KV is in the cache (or will be, once launched steps run)
  // Async scheduling: tokens sampled by launched steps, not yet in `tokens` (0 or 1 when a step is
  // scheduled); the newest one's logit row in its replica's micro-batch; launched steps that
  // hold the sequence and are not yet collected (it is freed only after them).
  int pending = 0;
  int pending_row = -1;
  int in_flight = 0;
  std::vector<int32_t> blocks;
  int num_registered = 0;
  int cached_tokens = 0;
  bool admitted_once = false;
  std::unique_ptr<Sampler> sampler;  // rows sampled on the host
  bool host_sampled = false;         // logprobs: its logits come back to rank 0
  std::unique_ptr<StreamingDetokenizer> detok;
  std::unique_ptr<ChatOutputParser> parser;
  std::string held;  // text held back: it may be the start of a stop string
  // Engine thread: ended (blocks freed); it leaves the lists at the next RemoveEnded.
  bool ended = false;
  // Output side: its last output was pushed (later output work for it is dropped).
  bool output_ended = false;

  int generated() const { return static_cast<int>(tokens.size()) - prompt_len; }
  // Its length once the pending tokens are in.
  int length() const { return static_cast<int>(tokens.size()) + pending; }
  // Scheduling order: priority, then arrival (FCFS).
  bool Before(const Sequence& o) const {
    return req.priority != o.req.priority ? req.priority < o.req.priority : arrival < o.arrival;
  }
};

struct Engine::Replica {
  explicit Replica(int blocks, int block_size, bool caching)
      : manager(blocks, block_size, caching) {}
  BlockManager manager;
  std::vector<std::unique_ptr<Sequence>> running;  // in scheduling order
  std::deque<std::unique_ptr<Sequence>> waiting;   // in scheduling order
};

// One token's (or one end's) output work, queued by the engine thread in order.
struct Engine::OutputItem {
  Sequence* seq = nullptr;
  int32_t token = -1;  // -1: no token, an end decided by the engine (cancel, deadline, shutdown)
  int generated = 0;   // tokens generated, this one included
  Clock::time_point time;                     // the token's time (or the last token's for an end)
  FinishReason finish = FinishReason::kNone;  // ids-based stop, or the engine's end
  bool length = false;                        // max_tokens or the context window reached
  absl::Status status;
  std::vector<TokenLogprobs> logprobs;
};

StepLimits EngineStepLimits(const EngineOptions& options, const ModelConfig& config,
                            int num_kv_blocks, int block_size) {
  const int64_t max_len =
      options.max_model_len > 0 ? options.max_model_len : config.max_position_embeddings;
  StepLimits limits;
  limits.max_tokens = std::max(1, options.max_num_batched_tokens);
  // One logit row per sequence whose prompt is complete (its last token), at most one per sequence.
  limits.max_seqs = std::max(1, std::min(options.max_num_seqs, options.max_num_batched_tokens));
  limits.max_logit_rows = limits.max_seqs;
  limits.max_blocks_per_seq = static_cast<int>(std::clamp<int64_t>(
      (max_len + block_size - 1) / std::max(block_size, 1), 1, std::max(num_kv_blocks, 1)));
  limits.max_seq_len = static_cast<int>(
      std::min<int64_t>(max_len, static_cast<int64_t>(limits.max_blocks_per_seq) * block_size));
  return limits;
}

Engine::Engine(Executor& executor, const Tokenizer* tokenizer, Metrics* metrics,
               EngineOptions options)
    : executor_(executor), tokenizer_(tokenizer), metrics_(metrics), options_(std::move(options)) {
  vocab_ = executor_.config().vocab_size;
  if (options_.max_model_len <= 0)
    options_.max_model_len = executor_.config().max_position_embeddings;
  // The executor's workspace must hold the largest step these options plan.
  const StepLimits need = EngineStepLimits(options_, executor_.config(), executor_.num_kv_blocks(),
                                           executor_.block_size());
  const StepLimits& have = executor_.step_limits();
  TESSERA_CHECK(need.max_tokens <= have.max_tokens && need.max_seqs <= have.max_seqs &&
                need.max_logit_rows <= have.max_logit_rows &&
                need.max_blocks_per_seq <= have.max_blocks_per_seq &&
                need.max_seq_len <= have.max_seq_len)
      << "the executor's workspace was planned for smaller steps than the engine's options: tokens "
      << need.max_tokens << " > " << have.max_tokens << " or sequences " << need.max_seqs << " > "
      << have.max_seqs << " or blocks per sequence " << need.max_blocks_per_seq << " > "
      << have.max_blocks_per_seq << " or sequence length " << need.max_seq_len << " > "
      << have.max_seq_len;
  if (options_.sampleable_vocab <= 0 || options_.sampleable_vocab > vocab_)
    options_.sampleable_vocab = vocab_;
  for (int d = 0; d < executor_.parallel().dp; ++d) {
    replicas_.push_back(std::make_unique<Replica>(executor_.num_kv_blocks(), executor_.block_size(),
                                                  options_.enable_prefix_caching));
  }
  total_blocks_ = static_cast<int64_t>(executor_.num_kv_blocks()) * executor_.parallel().dp;
  free_blocks_ = total_blocks_.load();
  if (!options_.step_trace_path.empty()) {
    trace_ = std::make_unique<StepTrace>(options_.step_trace_path, options_.step_trace_steps);
  }
  UpdateGauges();  // scrapes before the first request see the idle state
  last_progress_ns_ = Clock::now().time_since_epoch().count();
}

Engine::~Engine() = default;

absl::Status Engine::Validate(const EngineRequest& r) const {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (r.prompt.empty()) return bad("the prompt is empty");
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= vocab_) {
      return bad("prompt token ", i, " has id ", r.prompt[i], ", outside the vocabulary [0, ",
                 vocab_, ")");
    }
  }
  if (r.max_tokens < 1) return bad("max_tokens must be >= 1, got ", r.max_tokens);
  const int64_t total = static_cast<int64_t>(r.prompt.size()) + r.max_tokens;
  if (total > options_.max_model_len) {
    return bad("prompt (", r.prompt.size(), " tokens) + max_tokens (", r.max_tokens,
               ") exceeds the context window (", options_.max_model_len, ")");
  }
  const int64_t capacity = static_cast<int64_t>(executor_.num_kv_blocks()) * executor_.block_size();
  if (total > capacity) {
    return bad("prompt + max_tokens (", total, " tokens) exceeds the KV cache of one replica (",
               capacity, " tokens)");
  }
  if (absl::Status s = ValidateSamplingParams(r.sampling); !s.ok()) return s;
  if (r.top_logprobs > kMaxTopLogprobs)
    return bad("logprobs must be <= ", kMaxTopLogprobs, ", got ", r.top_logprobs);
  for (const std::string& s : r.stop) {
    if (s.empty()) return bad("stop strings must not be empty");
  }
  for (int32_t id : r.stop_token_ids) {
    if (id < 0 || id >= vocab_) return bad("stop token id ", id, " is outside the vocabulary");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<RequestStream>> Engine::Submit(EngineRequest request) {
  if (absl::Status s = Validate(request); !s.ok()) return s;
  auto seq = std::make_unique<Sequence>();
  seq->stream = std::make_shared<RequestStream>(options_.max_buffered_outputs);
  seq->arrived = Clock::now();
  seq->req = std::move(request);
  std::shared_ptr<RequestStream> stream = seq->stream;
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_ || failed_) return absl::UnavailableError("the server is shutting down");
  if (draining_)
    return absl::UnavailableError("the server is draining and accepts no new requests");
  if (static_cast<int64_t>(live_.size()) >= options_.max_queue) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the request queue is full (", options_.max_queue, " requests)"));
  }
  if (live_.count(seq->req.request_id)) {
    return absl::AlreadyExistsError(
        absl::StrCat("request id '", seq->req.request_id, "' is already in flight"));
  }
  live_[seq->req.request_id] = stream;
  incoming_.push_back(std::move(seq));
  cv_.notify_all();
  return stream;
}

void Engine::Cancel(const std::string& request_id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (live_.count(request_id)) cancelled_.insert(request_id);
  cv_.notify_all();
}

void Engine::BeginDrain() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
}

void Engine::Stop(absl::Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!stopping_) stop_status_ = std::move(status);
  stopping_ = true;
  cv_.notify_all();
}

void Engine::FailAll(const absl::Status& status) {
  std::map<std::string, std::shared_ptr<RequestStream>> live;
  {
    std::lock_guard<std::mutex> lock(mu_);
    failed_ = true;
    live = live_;
    cv_.notify_all();
  }
  for (auto& [id, stream] : live) {
    EngineOutput out;
    out.finished = true;
    out.finish_reason = FinishReason::kError;
    out.status = status;
    // Counted here, once: the step loop's own Finish of these requests finds them closed.
    if (stream->Push(std::move(out)) == RequestStream::PushResult::kQueued && metrics_) {
      metrics_->AddError(absl::StatusCodeToString(status.code()));
    }
  }
}

std::chrono::steady_clock::duration Engine::SinceProgress() const {
  return Clock::now() - Clock::time_point(Clock::duration(last_progress_ns_.load()));
}

EngineStats Engine::stats() const {
  EngineStats s;
  s.running = running_count_;
  s.waiting = waiting_count_;
  s.free_blocks = free_blocks_;
  s.total_blocks = total_blocks_;
  return s;
}

int64_t Engine::in_flight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(live_.size());
}

void Engine::Intake() {
  std::deque<std::unique_ptr<Sequence>> incoming;
  std::set<std::string> cancelled;
  {
    std::lock_guard<std::mutex> lock(mu_);
    incoming.swap(incoming_);
    cancelled.swap(cancelled_);
  }
  for (auto& seq : incoming) {
    Sequence& s = *seq;
    s.arrival = next_arrival_++;
    s.tokens = s.req.prompt;
    s.prompt_len = static_cast<int>(s.tokens.size());
    s.sampler = std::make_unique<Sampler>(s.req.sampling, options_.seed + s.arrival);
    s.host_sampled = s.req.top_logprobs >= 0;
    if (tokenizer_ != nullptr) {
      s.detok = std::make_unique<StreamingDetokenizer>(*tokenizer_, s.req.skip_special_tokens);
    }
    if (s.req.parse_chat) s.parser = std::make_unique<ChatOutputParser>(*s.req.parse_chat);
    if (options_.on_request_arrival) options_.on_request_arrival(s.req);
    // Attention-DP: the replica with the fewest sequences owns it.
    int best = 0;
    for (int d = 1; d < static_cast<int>(replicas_.size()); ++d) {
      const auto load = [&](int i) {
        return replicas_[i]->running.size() + replicas_[i]->waiting.size();
      };
      if (load(d) < load(best)) best = d;
    }
    if (const int sibling = SiblingReplica(s); sibling >= 0) best = sibling;
    s.replica = best;
    by_id_[s.req.request_id] = &s;
    if (s.req.deadline)
      deadlines_.emplace(*s.req.deadline, std::make_pair(s.arrival, s.req.request_id));
    auto& waiting = replicas_[best]->waiting;
    auto pos = std::upper_bound(waiting.begin(), waiting.end(), seq,
                                [](const auto& a, const auto& b) { return a->Before(*b); });
    waiting.insert(pos, std::move(seq));
  }
  // Cancellations and deadlines: end the request and free its blocks now.
  // NOTE: by id and by a time-ordered map: a step never scans every sequence in flight for them.
  for (const std::string& id : cancelled) {
    auto it = by_id_.find(id);
    if (it != by_id_.end()) {
      End(it->second, FinishReason::kCancelled, absl::CancelledError("cancelled by the client"));
    }
  }
  const auto now = Clock::now();
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    const auto [arrival, id] = deadlines_.begin()->second;
    deadlines_.erase(deadlines_.begin());
    auto it = by_id_.find(id);
    if (it == by_id_.end() || it->second->arrival != arrival) continue;  // ended before
    End(it->second, FinishReason::kError,
        absl::DeadlineExceededError("the request's deadline passed"));
  }
  RemoveEnded();
}

void Engine::RemoveEnded() {
  if (!any_ended_) return;
  any_ended_ = false;
  const auto sweep = [this](auto* list) {
    auto keep = list->begin();
    for (auto it = list->begin(); it != list->end(); ++it) {
      if ((*it)->ended) {
        // A launched step still names it: freed once that step is collected.
        ((*it)->in_flight > 0 ? limbo_ : retired_).push_back(std::move(*it));
      } else {
        if (keep != it) *keep = std::move(*it);
        ++keep;
      }
    }
    list->erase(keep, list->end());
  };
  for (auto& replica : replicas_) {
    sweep(&replica->running);
    sweep(&replica->waiting);
  }
}

void Engine::Preempt(Replica& replica, Sequence* seq) {
  // Recompute later: drop the KV (full blocks stay in the prefix cache), keep the tokens.
  replica.manager.Free(&seq->blocks);
  seq->num_computed = 0;
  seq->num_registered = 0;
  if (metrics_) metrics_->AddPreemption();
}

int Engine::SiblingReplica(const Sequence& seq) const {
  if (seq.req.prompt_group.empty()) return -1;
  auto holds = [&seq](const auto& list) {
    for (const auto& other : list) {
      if (other->req.prompt_group == seq.req.prompt_group) return true;
    }
    return false;
  };
  for (int d = 0; d < static_cast<int>(replicas_.size()); ++d) {
    if (holds(replicas_[d]->running) || holds(replicas_[d]->waiting)) return d;
  }
  return -1;
}

bool Engine::WaitsForSibling(const Replica& replica, const Sequence& seq) const {
  if (seq.req.prompt_group.empty() || !options_.enable_prefix_caching || seq.admitted_once) {
    return false;
  }
  // The full blocks a prefix match can give it (its last prompt token is always computed).
  const int shareable = (seq.prompt_len - 1) / replica.manager.block_size();
  if (shareable == 0) return false;
  for (const auto& other : replica.running) {
    if (other->req.prompt_group == seq.req.prompt_group && other->num_registered < shareable) {
      return true;
    }
  }
  return false;
}

bool Engine::Schedule(Replica& replica, std::vector<std::pair<Sequence*, int>>* scheduled) {
  BlockManager& bm = replica.manager;
  int budget = options_.max_num_batched_tokens;
  // The most tokens one sequence may take this step: the budget left, and for a prefill
  // `--long-prefill-token-threshold` (a decode's one token is always below it).
  const int cap = options_.long_prefill_token_threshold;
  auto ChunkLimit = [cap](int left) { return cap > 0 ? std::min(left, cap) : left; };
  bool preempted = false;
  // Running sequences first, in order: decodes (1 token) and unfinished prefills (a chunk).
  for (size_t i = 0; i < replica.running.size() && budget > 0;) {
    Sequence* s = replica.running[i].get();
    if (s->pending > 0 && (s->generated() + s->pending >= s->req.max_tokens ||
                           s->length() >= options_.max_model_len)) {
      ++i;  // its pending token is its last (max_tokens, the context): it ends when collected
      continue;
    }
    // A pending token is one decode whose input is on the device (the previous step's sample).
    const int need = s->length() - s->num_computed;
    const int n = std::min(need, ChunkLimit(budget));
    bool self_preempted = false;
    while (!bm.Reserve(&s->blocks, s->num_computed + n)) {
      // Out of blocks: preempt the last-served running sequence (maybe this one).
      std::unique_ptr<Sequence> victim = std::move(replica.running.back());
      replica.running.pop_back();
      Preempt(replica, victim.get());
      preempted = true;
      const bool is_self = victim.get() == s;
      auto pos = std::upper_bound(replica.waiting.begin(), replica.waiting.end(), victim,
                                  [](const auto& a, const auto& b) { return a->Before(*b); });
      replica.waiting.insert(pos, std::move(victim));
      if (is_self) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;
    scheduled->push_back({s, n});
    budget -= n;
    ++i;
  }
  // Then waiting sequences, FCFS by priority, unless this step already had to preempt.
  while (!preempted && budget > 0 && !replica.waiting.empty() &&
         static_cast<int>(replica.running.size()) < options_.max_num_seqs) {
    Sequence* s = replica.waiting.front().get();
    if (s->pending > 0) break;  // preempted with a token in flight: readmitted once it is in
    if (WaitsForSibling(replica, *s)) break;
    if (s->blocks.empty() && s->num_computed == 0) {
      s->num_computed = bm.MatchPrefix(s->tokens, 1, &s->blocks);
      s->num_registered = s->num_computed / bm.block_size();
      if (!s->admitted_once) s->cached_tokens = s->num_computed;
    }
    const int n =
        std::min(static_cast<int>(s->tokens.size()) - s->num_computed, ChunkLimit(budget));
    if (!bm.Reserve(&s->blocks, s->num_computed + n)) {
      bm.Free(&s->blocks);  // give back the prefix match; try again next step
      s->num_computed = 0;
      s->num_registered = 0;
      break;
    }
    // Counted once per request (not per retry or recomputation): hits / prompt = hit ratio.
    if (!s->admitted_once && metrics_) {
      metrics_->AddPromptTokens(s->prompt_len);
      metrics_->AddPrefixCacheHitTokens(s->cached_tokens);
    }
    s->admitted_once = true;
    replica.running.push_back(std::move(replica.waiting.front()));
    replica.waiting.pop_front();
    scheduled->push_back({s, n});
    budget -= n;
  }
  return !scheduled->empty();
}

void Engine::Step(StepRecord* rec) {
  const int dp = static_cast<int>(replicas_.size());
  const int pp = executor_.parallel().pp;
  const int bs = executor_.block_size();
  rec->Begin(StepPhase::kSchedule);
  RemoveEnded();
  std::vector<std::vector<std::pair<Sequence*, int>>> scheduled(dp);
  bool any = false;
  for (int d = 0; d < dp; ++d) {
    any |= Schedule(*replicas_[d], &scheduled[d]);
    // One-token sequences (decodes, 1-token chunks) first, stably: the batches are built in this
    // order (rows, logit rows, row owners), so the model's attention gives those rows its decode
    // kernel (StepBatch::single_token_seqs). Only the order changes, not what runs.
    std::stable_partition(scheduled[d].begin(), scheduled[d].end(),
                          [](const std::pair<Sequence*, int>& e) { return e.second == 1; });
  }
  rec->End(StepPhase::kSchedule);
  if (!any) {
    if (!in_flight_.empty()) {
      // Nothing new to run before the step in flight is in (every sequence waits for its token).
      // The record only collects: it carries that step's number and composition.
      const StepRecord& launched = in_flight_.front().record;
      rec->step = launched.step;
      rec->seqs = launched.seqs;
      rec->prefill_tokens = launched.prefill_tokens;
      rec->decode_tokens = launched.decode_tokens;
      rec->one_token_seqs = launched.one_token_seqs;
      rec->single_token_seqs = launched.single_token_seqs;
      rec->running = launched.running;
      rec->waiting = launched.waiting;
      rec->pure_decode = launched.pure_decode;
      CollectStep(rec);
      return;
    }
    // Nothing to run: finish the output work still pending (ends from Intake, the last step's).
    JoinOutputs();
    FlushOutputs(-1);
    JoinOutputs();
    RemoveEnded();
    UpdateGauges();
    return;
  }
  UpdateGauges();
  rec->running = static_cast<int>(running_count_);
  rec->waiting = static_cast<int>(waiting_count_);
  rec->Begin(StepPhase::kPlan);

  // Micro-batches: with pipeline stages, split each replica's sequences into up to `pp` groups
  // of similar token counts; every replica gets the same number of micro-batches.
  int micro = 1;
  for (int d = 0; d < dp; ++d)
    micro = std::max(micro, std::min<int>(pp, static_cast<int>(scheduled[d].size())));
  StepPlan plan;
  plan.replicas.assign(dp, std::vector<StepBatch>(micro));
  InFlight step;
  // Overlapped (async scheduling) unless a row needs the host's sampler or every token (penalties).
  bool overlapped = options_.async_scheduling && pp == 1;
  std::vector<int> new_rows;  // [row_owner]: the row's index in its replica's micro-batch
  for (int d = 0; d < dp; ++d) {
    const auto& list = scheduled[d];
    int total = 0;
    for (const auto& [s, n] : list) total += n;
    int group = 0, in_group = 0;
    std::vector<std::vector<std::pair<Sequence*, int>>> groups(micro);
    for (size_t i = 0; i < list.size(); ++i) {
      groups[group].push_back(list[i]);
      in_group += list[i].second;
      const int remaining_groups = micro - group - 1;
      const int remaining_seqs = static_cast<int>(list.size() - i - 1);
      if (remaining_groups > 0 &&
          (in_group * micro >= total || remaining_seqs <= remaining_groups)) {
        ++group;
        in_group = 0;
      }
    }
    for (int m = 0; m < micro; ++m) {
      StepBatchBuilder b(bs);
      int rows = 0;
      for (const auto& [s, n] : groups[m]) {
        if (s->pending > 0) {
          // Its input is the token the step in flight samples for it: taken on the device.
          TESSERA_CHECK(n == 1 && s->pending == 1 && s->num_computed == s->length() - 1);
          b.AddPendingToken(s->blocks, s->num_computed, s->pending_row);
        } else {
          b.AddSequence(s->tokens, s->blocks, s->num_computed, s->num_computed + n);
        }
        // A sequence whose computed tokens reach its end gives a logit row: its next token.
        if (s->num_computed + n < s->length()) continue;
        LogitRowSampling row;  // host-sampled rows (logprobs) return their logits
        if (!s->host_sampled) {
          row = DeviceSampledRow(s->req.sampling, options_.seed + s->arrival, s->tokens,
                                 s->prompt_len, options_.sampleable_vocab, s->pending);
        }
        overlapped &= !s->host_sampled && !HasPenalties(s->req.sampling);
        b.AddLogitRow(b.num_tokens() - 1, row);
        step.row_owner.push_back(s);
        new_rows.push_back(rows++);
      }
      plan.replicas[d][m] = std::move(b).Build();
    }
  }
  plan.overlapped = overlapped;
  rec->pure_decode = true;
  for (int d = 0; d < dp; ++d) {
    for (const auto& [s, n] : scheduled[d]) {
      ++rec->seqs;
      const bool decode =
          s->num_computed + n == s->length() && n == 1 && s->num_computed >= s->prompt_len;
      (decode ? rec->decode_tokens : rec->prefill_tokens) += n;
      rec->pure_decode &= decode;
      rec->one_token_seqs += n == 1;
    }
    for (const StepBatch& b : plan.replicas[d]) rec->single_token_seqs += b.single_token_seqs;
  }
  rec->End(StepPhase::kPlan);

  step.launched = Clock::now();
  executor_.Launch(plan, rec);
  rec->step = steps_++;
  step.record = *rec;
  // The launched step's effects, as if done: the scheduler plans the next step from them.
  for (int d = 0; d < dp; ++d) {
    for (const auto& [s, n] : scheduled[d]) {
      s->num_computed += n;
      ++s->in_flight;
      step.scheduled.push_back(s);
      // Full blocks of known tokens only (a pending token's block is registered once it is in).
      replicas_[d]->manager.Register(s->tokens, s->blocks,
                                     std::min<int>(s->num_computed, s->tokens.size()),
                                     &s->num_registered);
    }
  }
  for (size_t k = 0; k < step.row_owner.size(); ++k) {
    ++step.row_owner[k]->pending;
    step.row_owner[k]->pending_row = new_rows[k];
  }
  in_flight_.push_back(std::move(step));
  // The step before, overlapped with this one, is read now; this one too unless it overlaps.
  if (in_flight_.size() == 2) CollectStep(rec);
  if (!overlapped) CollectStep(rec);
}

void Engine::CollectStep(StepRecord* rec) {
  InFlight step = std::move(in_flight_.front());
  in_flight_.pop_front();
  const StepOutput result = executor_.Collect(rec);
  rec->collected = step.record.step;
  const auto now = Clock::now();
  if (metrics_ != nullptr) {
    // The step's time: from its launch, or from the previous step's results if it ran behind it.
    metrics_->ObserveEngineStep(Seconds(now - std::max(step.launched, last_collected_)));
    metrics_->ObserveEngineStepDevice(result.device_seconds);
  }
  rec->collected_device_ns = static_cast<int64_t>(result.device_seconds * 1e9);
  last_collected_ = now;
  // The output work of the previous step ran beside this forward; what it ended (stop strings,
  // slow readers) is freed now, and such a sequence's token of this step is discarded.
  rec->Begin(StepPhase::kOutputWait);
  JoinOutputs();
  rec->End(StepPhase::kOutputWait);
  rec->Begin(StepPhase::kSample);
  const std::vector<Sequence*>& row_owner = step.row_owner;
  TESSERA_CHECK_EQ(result.tokens.size(), row_owner.size());
  size_t host_rows = 0;
  for (Sequence* s : row_owner) host_rows += s->host_sampled ? 1 : 0;
  TESSERA_CHECK_EQ(result.logits.size(), host_rows * static_cast<size_t>(vocab_));
  for (Sequence* s : step.scheduled) --s->in_flight;
  if (metrics_) {
    const Qwen3Model::ExpertLoad load = executor_.model().expert_load();
    if (!load.tokens_per_expert.empty()) {
      metrics_->SetExpertLoad(load.tokens_per_expert, load.rows_per_rank);
    }
  }
  size_t h = 0;  // host rows' logits, in row order
  for (size_t k = 0; k < row_owner.size(); ++k) {
    Sequence* s = row_owner[k];
    const float* row = s->host_sampled ? result.logits.data() + h++ * vocab_ : nullptr;
    --s->pending;
    // Ended since the step was planned (the output work's stop string, a cancel, an id-based end
    // of the step before): the token is discarded.
    if (s->ended) continue;
    if (!s->host_sampled) {
      TESSERA_CHECK(result.tokens[k] >= 0 && result.tokens[k] < options_.sampleable_vocab)
          << "device sampled id " << result.tokens[k];
      Accept(s, result.tokens[k], nullptr);
    } else {
      const std::vector<int32_t> generated(s->tokens.begin() + s->prompt_len, s->tokens.end());
      const int32_t token = s->sampler->Sample(absl::MakeConstSpan(row, vocab_),
                                               options_.sampleable_vocab, s->tokens, generated);
      Accept(s, token, row);
    }
    if (!s->ended && !s->blocks.empty()) {
      replicas_[s->replica]->manager.Register(s->tokens, s->blocks,
                                              std::min<int>(s->num_computed, s->tokens.size()),
                                              &s->num_registered);
    }
  }
  // Ended sequences no launched step names any more are freed like any other.
  auto keep = limbo_.begin();
  for (auto it = limbo_.begin(); it != limbo_.end(); ++it) {
    if ((*it)->in_flight == 0) {
      retired_.push_back(std::move(*it));
    } else {
      *keep++ = std::move(*it);
    }
  }
  limbo_.erase(keep, limbo_.end());
  rec->End(StepPhase::kSample);
  rec->output_async = out_thread_.joinable();
  if (!rec->output_async) rec->Begin(StepPhase::kOutput);
  FlushOutputs(rec->step);
  if (!rec->output_async) rec->End(StepPhase::kOutput);
  RemoveEnded();
  UpdateGauges();
}

void Engine::Accept(Sequence* s, int32_t token, const float* logits) {
  const auto now = Clock::now();
  if (s->generated() == 0) {
    s->first_token = now;
    if (metrics_) metrics_->ObserveTimeToFirstToken(Seconds(now - s->arrived));
  } else if (metrics_) {
    metrics_->ObserveInterTokenLatency(Seconds(now - s->last_token));
  }
  s->last_token = now;
  s->tokens.push_back(token);
  if (metrics_) metrics_->AddGenerationTokens(1);

  OutputItem item;
  item.seq = s;
  item.token = token;
  item.generated = s->generated();
  item.time = now;
  if (s->req.top_logprobs >= 0) {  // such rows are host-sampled: their logits are here
    // Log-probabilities of the model's own distribution (before penalties and temperature).
    const float mx = *std::max_element(logits, logits + options_.sampleable_vocab);
    double sum = 0;
    for (int64_t i = 0; i < options_.sampleable_vocab; ++i)
      sum += std::exp(static_cast<double>(logits[i] - mx));
    const float log_sum = static_cast<float>(std::log(sum)) + mx;
    TokenLogprobs lp;
    lp.chosen = {token, logits[token] - log_sum};
    if (s->req.top_logprobs > 0) {
      std::vector<int32_t> ids(options_.sampleable_vocab);
      std::iota(ids.begin(), ids.end(), 0);
      const int k = s->req.top_logprobs;
      std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
      });
      for (int i = 0; i < k; ++i) lp.top.push_back({ids[i], logits[ids[i]] - log_sum});
    }
    item.logprobs.push_back(std::move(lp));
  }
  // The ids-based ends are decided here, exactly: the sequence is not scheduled again.
  const bool eos = !s->req.ignore_eos &&
                   std::count(options_.eos_token_ids.begin(), options_.eos_token_ids.end(), token);
  const bool stop_id =
      std::count(s->req.stop_token_ids.begin(), s->req.stop_token_ids.end(), token);
  if (eos || stop_id) item.finish = FinishReason::kStop;
  item.length = s->generated() >= s->req.max_tokens ||
                static_cast<int64_t>(s->tokens.size()) >= options_.max_model_len;
  if (item.finish != FinishReason::kNone || item.length) Release(s);
  outputs_.push_back(std::move(item));
}

void Engine::End(Sequence* s, FinishReason reason, absl::Status status) {
  if (s->ended) return;
  OutputItem item;
  item.seq = s;
  item.generated = s->generated();
  item.time = s->generated() > 0 ? s->last_token : Clock::now();
  item.finish = reason;
  item.status = std::move(status);
  Release(s);
  outputs_.push_back(std::move(item));
}

void Engine::ProcessOutput(OutputItem& item) {
  Sequence* s = item.seq;
  if (s->output_ended) return;  // its last output is out (a stop string one step earlier)
  if (item.token < 0) {
    PushFinal(item, item.finish, item.status, EngineOutput{});
    return;
  }
  const int32_t token = item.token;
  EngineOutput out;
  out.token_ids.push_back(token);
  out.logprobs = std::move(item.logprobs);
  FinishReason finish = item.finish;

  // Text: whole characters only; hold back what could start a stop string.
  std::string text;
  if (s->detok && finish == FinishReason::kNone) {
    absl::StatusOr<std::string> delta = s->detok->Push(token);
    if (delta.ok()) text = *delta;
  }
  s->held += text;
  std::string emit;
  if (!s->req.stop.empty()) {
    size_t hit = std::string::npos;
    for (const std::string& stop : s->req.stop) hit = std::min(hit, s->held.find(stop));
    if (hit != std::string::npos) {
      emit = s->held.substr(0, hit);
      s->held.clear();
      finish = FinishReason::kStop;
    } else {
      size_t longest = 0;
      for (const std::string& stop : s->req.stop) longest = std::max(longest, stop.size());
      const size_t keep = longest - 1;
      if (s->held.size() > keep) {
        const size_t n = CharBoundary(s->held, s->held.size() - keep);
        emit = s->held.substr(0, n);
        s->held.erase(0, n);
      }
    }
  } else {
    emit.swap(s->held);
  }
  if (finish == FinishReason::kNone && item.length) finish = FinishReason::kLength;
  if (finish != FinishReason::kNone && finish != FinishReason::kStop) {
    // Ran out of tokens: what was held back (and any partial character) is output after all.
    emit += s->held;
    s->held.clear();
    if (s->detok) emit += s->detok->Flush();
  }

  if (s->parser) {
    std::vector<OutputEvent> events = s->parser->Push(emit);
    if (finish != FinishReason::kNone) {
      std::vector<OutputEvent> tail = s->parser->Finish();
      events.insert(events.end(), tail.begin(), tail.end());
    }
    for (OutputEvent& e : events) {
      switch (e.kind) {
        case OutputEvent::Kind::kReasoning:
          out.reasoning += e.text;
          break;
        case OutputEvent::Kind::kContent:
          out.text += e.text;
          break;
        case OutputEvent::Kind::kToolCall:
          out.tool_calls.push_back(std::move(e.tool_call));
          break;
        case OutputEvent::Kind::kError:
          break;  // the block's text came back as content
      }
    }
  } else {
    out.text = std::move(emit);
  }

  if (finish != FinishReason::kNone) {
    PushFinal(item, finish, absl::OkStatus(), std::move(out));
  } else if (s->stream->Push(std::move(out)) == RequestStream::PushResult::kFull) {
    // The reader is too far behind (a stalled client): end the request rather than buffer more.
    PushFinal(
        item, FinishReason::kError,
        absl::ResourceExhaustedError(absl::StrCat(
            "the client reads too slowly (", options_.max_buffered_outputs, " outputs buffered)")),
        EngineOutput{});
  }
}

void Engine::PushFinal(OutputItem& item, FinishReason reason, absl::Status status,
                       EngineOutput out) {
  Sequence* s = item.seq;
  out.finished = true;
  out.finish_reason = reason;
  out.status = std::move(status);
  out.prompt_tokens = s->prompt_len;
  out.completion_tokens = item.generated;
  out.cached_tokens = s->cached_tokens;
  const std::string code = absl::StatusCodeToString(out.status.code());
  std::optional<EngineOutput> logged;
  if (options_.on_request_finish) logged = out;
  // Counted only if this output ends the request (FailAll may have ended it already), and in
  // exactly one of the two counters.
  const bool ended = s->stream->Push(std::move(out)) == RequestStream::PushResult::kQueued;
  if (ended && logged) {
    const auto now = Clock::now();
    options_.on_request_finish(s->req, *logged,
                               item.generated > 0 ? Seconds(s->first_token - s->arrived) : -1.0,
                               Seconds(now - s->arrived));
  }
  if (metrics_ && ended) {
    if (reason == FinishReason::kError) {
      metrics_->AddError(code);
    } else {
      metrics_->AddFinished(FinishReasonName(reason));
    }
    metrics_->ObserveEndToEnd(Seconds(Clock::now() - s->arrived));
    if (item.generated > 1) {
      metrics_->ObserveTimePerOutputToken(Seconds(item.time - s->first_token) /
                                          (item.generated - 1));
    }
  }
  s->output_ended = true;
  output_ended_.push_back(s);
  std::lock_guard<std::mutex> lock(mu_);
  live_.erase(s->req.request_id);
  cancelled_.erase(s->req.request_id);
}

void Engine::Release(Sequence* s) {
  if (s->ended) return;
  replicas_[s->replica]->manager.Free(&s->blocks);
  s->ended = true;
  any_ended_ = true;
  auto it = by_id_.find(s->req.request_id);
  if (it != by_id_.end() && it->second == s) by_id_.erase(it);
}

void Engine::FlushOutputs(int64_t step) {
  if (out_thread_.joinable()) {
    if (outputs_.empty()) {
      if (!handed_) retired_.clear();  // no output work names them
      return;
    }
    std::lock_guard<std::mutex> lock(out_mu_);
    TESSERA_CHECK(!handed_ && out_batch_.empty());
    out_batch_.swap(outputs_);
    out_step_ = step;
    out_busy_ = true;
    retired_handed_ = std::move(retired_);
    retired_.clear();
    handed_ = true;
    out_cv_.notify_all();
    return;
  }
  for (OutputItem& item : outputs_) ProcessOutput(item);
  outputs_.clear();
  for (Sequence* s : output_ended_) Release(s);
  output_ended_.clear();
  RemoveEnded();
  retired_.clear();
}

void Engine::JoinOutputs() {
  if (!handed_) return;
  std::vector<Sequence*> ended;
  int64_t step, begin_ns, end_ns;
  {
    std::unique_lock<std::mutex> lock(out_mu_);
    out_cv_.wait(lock, [this] { return !out_busy_; });
    ended.swap(output_ended_);
    step = out_done_step_;
    begin_ns = out_begin_ns_;
    end_ns = out_end_ns_;
  }
  handed_ = false;
  if (trace_ && step >= 0) trace_->SetOutput(step, begin_ns, end_ns);
  for (Sequence* s : ended) Release(s);  // before retired_handed_ goes: it may hold them
  retired_handed_.clear();
}

void Engine::OutputLoop() {
  std::unique_lock<std::mutex> lock(out_mu_);
  for (;;) {
    out_cv_.wait(lock, [this] { return out_busy_ || out_quit_; });
    if (!out_busy_) return;  // quit with nothing pending
    std::vector<OutputItem> batch;
    batch.swap(out_batch_);
    const int64_t step = out_step_;
    lock.unlock();
    const int64_t begin = StepRecord::Now();
    for (OutputItem& item : batch) ProcessOutput(item);
    const int64_t end = StepRecord::Now();
    lock.lock();
    out_done_step_ = step;
    out_begin_ns_ = begin;
    out_end_ns_ = end;
    out_busy_ = false;
    out_cv_.notify_all();
  }
}

void Engine::UpdateGauges() {
  int64_t running = 0, waiting = 0, free = 0;
  for (const auto& r : replicas_) {
    running += static_cast<int64_t>(r->running.size());
    waiting += static_cast<int64_t>(r->waiting.size());
    free += r->manager.num_free();
  }
  running_count_ = running;
  waiting_count_ = waiting;
  free_blocks_ = free;
  if (metrics_) {
    metrics_->SetRunning(running);
    metrics_->SetWaiting(waiting);
    metrics_->SetKvBlocks(free, total_blocks_);
    metrics_->SetKvUsage(total_blocks_ > 0 ? 1.0 - static_cast<double>(free) / total_blocks_ : 0.0);
  }
}

void Engine::Run() {
  const auto progress = [this] { last_progress_ns_ = Clock::now().time_since_epoch().count(); };
  progress();
  if (options_.async_output) out_thread_ = std::thread(&Engine::OutputLoop, this);
  for (;;) {
    // Sequences still in the lists (or output work not joined) keep the loop stepping, so that
    // what their output ended is freed before the loop idles.
    bool pending = handed_ || !outputs_.empty() || !in_flight_.empty();
    for (const auto& r : replicas_) pending |= !r->running.empty() || !r->waiting.empty();
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (stopping_ || failed_) break;
      if (options_.fault_after_steps >= 0 && steps_ >= options_.fault_after_steps) {
        if (options_.fault) {
          options_.fault_after_steps = -1;  // once
          lock.unlock();
          options_.fault();
          continue;
        }
        // Injected wedge: no more steps or heartbeats, but Stop() still ends the loop.
        cv_.wait(lock, [this] { return stopping_ || failed_; });
        break;
      }
      const bool idle = incoming_.empty() && cancelled_.empty() && live_.empty() && !pending;
      if (idle) {
        // Nothing to do: wake for work, or send the workers a heartbeat that every rank answers:
        // their wait for the next plan never looks like a hang to their watchdog, and a hung
        // rank stalls this loop (SinceProgress) and then trips rank 0's watchdog.
        if (!cv_.wait_for(lock, kIdleHeartbeat, [this] {
              return stopping_ || failed_ || !incoming_.empty() || !cancelled_.empty();
            })) {
          lock.unlock();
          executor_.Heartbeat();
          progress();
          continue;
        }
        if (stopping_ || failed_) break;
      }
    }
    StepRecord rec;
    rec.Begin(StepPhase::kIntake);
    Intake();
    rec.End(StepPhase::kIntake);
    Step(&rec);
    const auto took = [&rec](StepPhase p) {
      return rec.end_ns[static_cast<int>(p)] - rec.begin_ns[static_cast<int>(p)];
    };
    if (rec.end_ns[static_cast<int>(StepPhase::kForward)] != 0 ||
        rec.end_ns[static_cast<int>(StepPhase::kCollect)] != 0) {
      // A forward ran or was collected: the host time is the loop's time outside the forward and
      // the wait for results.
      int64_t last = 0;
      for (int p = 0; p < static_cast<int>(StepPhase::kCount); ++p) {
        if (!(rec.output_async && p == static_cast<int>(StepPhase::kOutput)))
          last = std::max(last, rec.end_ns[p]);
      }
      const int64_t host = last - rec.begin_ns[static_cast<int>(StepPhase::kIntake)] -
                           took(StepPhase::kForward) - took(StepPhase::kCollect);
      if (metrics_) metrics_->ObserveEngineHost(static_cast<double>(host) / 1e9);
      if (trace_) trace_->Add(rec);
    }
    progress();
  }
  absl::Status stop_status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_status =
        stop_status_.ok() ? absl::UnavailableError("the server is shutting down") : stop_status_;
  }
  // A step in flight is collected first (unless a rank failed: then nothing answers).
  if (failed_) in_flight_.clear();
  while (!in_flight_.empty()) {
    StepRecord rec;
    CollectStep(&rec);
  }
  // The output thread's work ends first; from here on outputs are pushed on this thread.
  JoinOutputs();
  if (out_thread_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(out_mu_);
      out_quit_ = true;
      out_cv_.notify_all();
    }
    out_thread_.join();
  }
  // Whatever is still in flight cannot finish now.
  for (auto& replica : replicas_) {
    for (auto& seq : replica->running) End(seq.get(), FinishReason::kError, stop_status);
    for (auto& seq : replica->waiting) End(seq.get(), FinishReason::kError, stop_status);
  }
  FlushOutputs(-1);
  for (auto& replica : replicas_) {
    replica->running.clear();
    replica->waiting.clear();
  }
  limbo_.clear();
  by_id_.clear();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& seq : incoming_) {
      EngineOutput out;
      out.finished = true;
      out.finish_reason = FinishReason::kError;
      out.status = stop_status;
      // One counter per request: an error is never counted as a finish too.
      if (seq->stream->Push(std::move(out)) == RequestStream::PushResult::kQueued && metrics_) {
        metrics_->AddError(absl::StatusCodeToString(stop_status.code()));
      }
    }
    incoming_.clear();
    live_.clear();
  }
  // After a rank failed (FailAll) the workers cannot be reached; otherwise they are told to stop,
  // also when requests were cut off (a drain timeout).
  if (!failed_) executor_.Shutdown();
  if (trace_) {
    if (absl::Status s = trace_->Write(); !s.ok()) {
      std::fprintf(stderr, "tessera: %s\n", std::string(s.message()).c_str());
    }
  }
}

}  // namespace tessera
