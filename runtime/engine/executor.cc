#include "runtime/engine/executor.h"

#include <algorithm>
#include <iterator>

#include "kernels/base/check.h"
#include "kernels/base/status_macros.h"

namespace tessera {

ModelDims ModelDimsOf(const ModelConfig& c) {
  ModelDims d;
  d.num_layers = c.num_hidden_layers;
  d.num_attention_heads = c.num_attention_heads;
  d.num_key_value_heads = c.num_key_value_heads;
  bool any_dense = false;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) any_dense |= !c.IsMoeLayer(l);
  d.intermediate_size = any_dense ? c.intermediate_size : 0;
  d.moe_intermediate_size = c.is_moe() ? c.moe_intermediate_size : 0;
  d.num_experts = c.num_experts;
  d.vocab_size = c.vocab_size;
  return d;
}

Executor::Executor(const ModelConfig& config, const ParallelConfig& p, Communicator* world)
    : config_(config), parallel_(p), world_(world) {
  TESSERA_CHECK(world != nullptr || p.world_size == 1);
  if (world != nullptr && p.world_size > 1) {
    // Collective over the world: every rank splits in the same order.
    tp_comm_ = world->Split(p.stage() * p.dp + p.dp_rank(), p.tp_rank(), "tp");
    stage_comm_ = world->Split(p.stage(), p.rank % p.stage_size(), "stage");
  }
}

ShardSpec Executor::MakeShard() {
  const ParallelConfig& p = parallel_;
  ShardSpec shard;
  shard.tp_rank = p.tp_rank();
  shard.tp_size = p.tp;
  shard.ep_rank = p.ep_rank();
  shard.ep_size = p.ep;
  shard.first_layer = p.first_layer(config_.num_hidden_layers);
  shard.last_layer = p.last_layer(config_.num_hidden_layers);
  if (world_ != nullptr && p.world_size > 1) {
    if (p.tp > 1) shard.tp = tp_comm_.get();
    if (p.ep > 1) shard.ep = stage_comm_.get();
    shard.pp = world_;
    if (p.stage() > 0) shard.pp_prev = p.RankOf(p.stage() - 1, p.dp_rank(), p.tp_rank());
    if (p.stage() + 1 < p.pp) shard.pp_next = p.RankOf(p.stage() + 1, p.dp_rank(), p.tp_rank());
  }
  return shard;
}

void Executor::AllocateKv(Backend& backend, int num_kv_blocks, int block_size) {
  num_kv_blocks_ = num_kv_blocks;
  block_size_ = block_size;
  kv_ = std::make_unique<KvCache>(backend, static_cast<int>(model_->num_local_layers()),
                                  num_kv_blocks, block_size, model_->kv_heads_local(),
                                  static_cast<int>(config_.head_dim));
}

void Executor::SetBackend(Backend& backend) {
  backend_ = &backend;
  if (parallel_.rank != 0) return;
  for (auto& timer : timers_) timer = backend.CreateTimer();
  next_timer_ = 0;
}

absl::Status Executor::LoadModel(const Checkpoint& checkpoint, Backend& backend,
                                 const StepLimits& limits) {
  ASSIGN_OR_RETURN(model_, Qwen3Model::Load(config_, checkpoint, backend, MakeShard()));
  model_->PlanWorkspace(limits);
  SetBackend(backend);
  return absl::OkStatus();
}

absl::Status Executor::Load(const Checkpoint& checkpoint, Backend& backend, int num_kv_blocks,
                            int block_size, const StepLimits& limits) {
  RETURN_IF_ERROR(LoadModel(checkpoint, backend, limits));
  AllocateKv(backend, num_kv_blocks, block_size);
  return absl::OkStatus();
}

absl::Status Executor::LoadDummy(Backend& backend, int num_kv_blocks, int block_size,
                                 const StepLimits& limits, uint64_t seed) {
  ASSIGN_OR_RETURN(model_, Qwen3Model::LoadDummy(config_, backend, MakeShard(), seed));
  model_->PlanWorkspace(limits);
  SetBackend(backend);
  AllocateKv(backend, num_kv_blocks, block_size);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Executor>> Executor::Create(
    const ModelConfig& config, const Checkpoint& checkpoint, Backend& backend,
    const ParallelConfig& p, Communicator* world, int num_kv_blocks, int block_size,
    const StepLimits& limits) {
  auto e = std::make_unique<Executor>(config, p, world);
  RETURN_IF_ERROR(e->Load(checkpoint, backend, num_kv_blocks, block_size, limits));
  return e;
}

Executor::Pending Executor::LaunchLocal(const StepPlan& plan) {
  const ParallelConfig& p = parallel_;
  TESSERA_CHECK_EQ(plan.replicas.size(), static_cast<size_t>(p.dp));
  const std::vector<StepBatch>& mine = plan.replicas[p.dp_rank()];
  const int num_micro = static_cast<int>(mine.size());
  for (const auto& replica : plan.replicas) TESSERA_CHECK_EQ(replica.size(), mine.size());
  TESSERA_CHECK(!plan.overlapped || (p.pp == 1 && num_micro == 1))
      << "only single-stage steps of one micro-batch overlap";

  Pending pending;
  pending.overlapped = plan.overlapped;
  pending.logits.resize(num_micro);
  pending.tokens.resize(num_micro);
  // Rank 0 receives every replica's results: their row and logit counts, in plan order.
  pending.sizes.resize(p.dp);
  for (int d = 0; d < p.dp; ++d) {
    for (const StepBatch& batch : plan.replicas[d]) {
      pending.sizes[d].push_back(
          {batch.logit_tokens.size(),
           NumLogitRowsReturned(batch) * static_cast<size_t>(config_.vocab_size)});
    }
  }
  // The expert exchange is sized from every replica's micro-batch, which the plan gives all ranks.
  std::vector<int> replica_tokens(p.dp);
  const auto tokens_of = [&](int m) {
    for (int d = 0; d < p.dp; ++d)
      replica_tokens[d] = static_cast<int>(plan.replicas[d][m].token_ids.size());
    return replica_tokens;
  };
  if (num_micro == 1 && p.pp == 1) {
    model_->Launch(mine[0], *kv_, tokens_of(0));
    pending.launched = true;
    return pending;
  }
  // Pipeline schedule: micro-batches in order; each Forward receives from the previous stage and
  // sends to the next, so stage s runs micro-batch m while stage s + 1 runs m - 1.
  for (int m = 0; m < num_micro; ++m)
    model_->Forward(mine[m], *kv_, &pending.logits[m], &pending.tokens[m], tokens_of(m));
  return pending;
}

void Executor::CollectLocal(Pending& pending, StepOutput* output) {
  const ParallelConfig& p = parallel_;
  if (pending.launched) model_->Collect(&pending.logits[0], &pending.tokens[0]);
  const int num_micro = static_cast<int>(pending.tokens.size());
  const std::vector<std::vector<float>>& my_logits = pending.logits;
  const std::vector<std::vector<int32_t>>& my_tokens = pending.tokens;
  // NOTE: results go to the coordinator only after the whole schedule: sending one mid-schedule
  // could block this stage while rank 0 still waits to hand it the next micro-batch.
  const bool reports = model_->last_stage() && p.tp_rank() == 0;
  if (p.rank != 0) {
    if (reports) {
      for (int m = 0; m < num_micro; ++m) {
        const auto& ids = my_tokens[m];
        const auto& rows = my_logits[m];
        if (!ids.empty()) world_->Send(ids.data(), ids.size(), DType::kI32, 0);
        if (!rows.empty()) world_->Send(rows.data(), rows.size(), DType::kF32, 0);
      }
    }
    return;
  }

  // Rank 0: gather every replica's ids and logits in plan order.
  output->tokens.clear();
  output->logits.clear();
  const int last = p.pp - 1;
  for (int d = 0; d < p.dp; ++d) {
    const int source = p.RankOf(last, d, 0);
    for (int m = 0; m < num_micro; ++m) {
      const auto [rows, count] = pending.sizes[d][m];
      if (rows == 0) continue;
      if (source == 0) {
        TESSERA_CHECK_EQ(my_tokens[m].size(), rows);
        TESSERA_CHECK_EQ(my_logits[m].size(), count);
        output->tokens.insert(output->tokens.end(), my_tokens[m].begin(), my_tokens[m].end());
        output->logits.insert(output->logits.end(), my_logits[m].begin(), my_logits[m].end());
        continue;
      }
      const size_t ids = output->tokens.size();
      output->tokens.resize(ids + rows);
      world_->Recv(output->tokens.data() + ids, rows, DType::kI32, source);
      if (count == 0) continue;
      const size_t offset = output->logits.size();
      output->logits.resize(offset + count);
      world_->Recv(output->logits.data() + offset, count, DType::kF32, source);
    }
  }
}

bool Executor::multi_rank() const { return world_ != nullptr && parallel_.world_size > 1; }

void Executor::Broadcast(const StepPlan& plan, StepRecord* record) {
  if (!multi_rank()) return;
  if (record != nullptr) record->Begin(StepPhase::kBroadcast);
  std::vector<uint8_t> bytes = SerializeStepPlan(plan);
  world_->BroadcastBytes(&bytes, 0);
  if (record != nullptr) record->End(StepPhase::kBroadcast);
}

void Executor::Launch(const StepPlan& plan, StepRecord* record) {
  TESSERA_CHECK_EQ(parallel_.rank, 0);
  TESSERA_CHECK(in_flight_.empty() || (in_flight_.size() == 1 && in_flight_.front().overlapped))
      << "a step launched while a step that does not overlap is uncollected";
  Broadcast(plan, record);
  if (record != nullptr) record->Begin(StepPhase::kForward);
  DeviceTimer* timer = timers_[next_timer_].get();
  next_timer_ = (next_timer_ + 1) % static_cast<int>(std::size(timers_));
  timer->Begin();
  in_flight_.push_back(LaunchLocal(plan));
  timer->End();
  in_flight_.back().timer = timer;
  if (record != nullptr) record->End(StepPhase::kForward);
}

StepOutput Executor::Collect(StepRecord* record) {
  TESSERA_CHECK_EQ(parallel_.rank, 0);
  TESSERA_CHECK(!in_flight_.empty()) << "Collect without a launched step";
  if (in_flight_.size() == 1 && in_flight_.front().overlapped) {
    // The workers wait for the next plan before they report an overlapped step: tell them.
    StepPlan collect;
    collect.kind = StepPlan::Kind::kCollect;
    Broadcast(collect, nullptr);
  }
  if (record != nullptr) record->Begin(StepPhase::kCollect);
  StepOutput output;
  CollectLocal(in_flight_.front(), &output);
  // NOTE: the timer's end directly follows the event the wait for the step's ids saw pass
  // (Qwen3Model::Collect), so this returns at once. Where rank 0 waited for no ids of its own (no
  // logit rows: a prompt chunk; pipeline stages, whose results come from the last stage) it waits
  // for its part of the step here.
  DeviceTimer* timer = in_flight_.front().timer;
  backend_->WaitUntil([timer] { return timer->Query(); });
  output.device_seconds = timer->Seconds();
  in_flight_.pop_front();
  if (record != nullptr) record->End(StepPhase::kCollect);
  return output;
}

StepOutput Executor::Execute(const StepPlan& plan, StepRecord* record) {
  TESSERA_CHECK(!plan.overlapped);
  Launch(plan, record);
  return Collect(record);
}

void Executor::Shutdown() {
  TESSERA_CHECK_EQ(parallel_.rank, 0);
  TESSERA_CHECK(in_flight_.empty()) << "shutdown with a step uncollected";
  if (world_ == nullptr || parallel_.world_size == 1) return;
  StepPlan plan;
  plan.kind = StepPlan::Kind::kShutdown;
  std::vector<uint8_t> bytes = SerializeStepPlan(plan);
  world_->BroadcastBytes(&bytes, 0);
}

void Executor::Heartbeat() {
  TESSERA_CHECK_EQ(parallel_.rank, 0);
  TESSERA_CHECK(in_flight_.empty()) << "heartbeat with a step uncollected";
  if (world_ == nullptr || parallel_.world_size == 1) return;
  StepPlan plan;
  plan.kind = StepPlan::Kind::kHeartbeat;
  std::vector<uint8_t> bytes = SerializeStepPlan(plan);
  world_->BroadcastBytes(&bytes, 0);
  // NOTE: a broadcast can complete on the root before a receiver takes it (eager sends), so an
  // idle hung rank would go unseen; the barrier needs every rank to answer.
  world_->Barrier();
}

void Executor::RunWorker() {
  TESSERA_CHECK(parallel_.rank != 0);
  // Rank 0's order, mirrored: an overlapped step is reported after the next plan (a forward, or
  // kCollect) has been launched; any other step as soon as it is launched.
  std::deque<Pending> in_flight;
  for (;;) {
    std::vector<uint8_t> bytes;
    world_->BroadcastBytes(&bytes, 0);
    absl::StatusOr<StepPlan> plan = DeserializeStepPlan(bytes);
    TESSERA_CHECK(plan.ok()) << plan.status();
    if (plan->kind == StepPlan::Kind::kShutdown) {
      TESSERA_CHECK(in_flight.empty()) << "shutdown with a step uncollected";
      return;
    }
    if (plan->kind == StepPlan::Kind::kHeartbeat) {
      TESSERA_CHECK(in_flight.empty()) << "heartbeat with a step uncollected";
      world_->Barrier();  // rank 0 waits for every rank's answer (Heartbeat)
      continue;
    }
    if (plan->kind == StepPlan::Kind::kCollect) {
      TESSERA_CHECK_EQ(in_flight.size(), 1u) << "kCollect without an overlapped step";
      CollectLocal(in_flight.front(), nullptr);
      in_flight.pop_front();
      continue;
    }
    in_flight.push_back(LaunchLocal(*plan));
    if (in_flight.size() == 2) {  // the overlapped step before this one
      CollectLocal(in_flight.front(), nullptr);
      in_flight.pop_front();
    }
    if (!plan->overlapped) {
      CollectLocal(in_flight.front(), nullptr);
      in_flight.pop_front();
    }
  }
}

}  // namespace tessera
