#include "runtime/engine/generate.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "runtime/engine/step_builder.h"

namespace tessera {

absl::Status ValidatePrompt(const ModelConfig& config, const std::vector<int64_t>& prompt,
                            int64_t max_new_tokens) {
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  for (size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0 || prompt[i] >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt token ", i, " has id ", prompt[i],
                                                     ", outside the vocabulary [0, ",
                                                     config.vocab_size, ")"));
    }
  }
  if (max_new_tokens < 0) return absl::InvalidArgumentError("max new tokens must be >= 0");
  const int64_t limit = config.max_position_embeddings;
  if (static_cast<int64_t>(prompt.size()) > limit) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt has ", prompt.size(),
                                                   " tokens, more than max_position_embeddings (",
                                                   limit, ")"));
  }
  if (static_cast<int64_t>(prompt.size()) + max_new_tokens > limit) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt (", prompt.size(), " tokens) + max new tokens (", max_new_tokens,
                     ") exceeds max_position_embeddings (", limit, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<GenerateResult> Generate(Executor& executor, const std::vector<int32_t>& prompt,
                                        const GenerateOptions& options) {
  const ModelConfig& config = executor.config();
  RETURN_IF_ERROR(ValidatePrompt(config, std::vector<int64_t>(prompt.begin(), prompt.end()),
                                 options.max_new_tokens));
  RETURN_IF_ERROR(ValidateSamplingParams(options.sampling));

  const int n_prompt = static_cast<int>(prompt.size());
  const int total = n_prompt + options.max_new_tokens;
  const int bs = executor.block_size();
  const int num_blocks = (total + bs - 1) / bs;
  BlockAllocator allocator(executor.num_kv_blocks());
  std::vector<int32_t> table;
  if (!allocator.Allocate(num_blocks, &table)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the sequence needs ", num_blocks, " KV blocks of ", bs,
                     " tokens; the cache has ", executor.num_kv_blocks()));
  }

  if (num_blocks > executor.step_limits().max_blocks_per_seq) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the sequence needs a block table of ", num_blocks, " blocks of ", bs,
        " tokens; the executor was planned for ", executor.step_limits().max_blocks_per_seq));
  }
  const int64_t vocab = config.vocab_size;
  const int64_t sampleable = options.sampleable_vocab > 0 ? options.sampleable_vocab : vocab;
  Sampler sampler(options.sampling, options.default_seed);
  GenerateResult result;
  result.finish_reason = "length";

  // Without prompt logits the last row is sampled on the device, penalties included (the same
  // draw as the host Sampler's, so the tokens do not depend on the path).
  const bool on_device = !options.want_prompt_logits;
  // A micro-batch of positions [begin, end) of `sequence` (the prompt, then the output), with the
  // logits of every position (`all_logits`: prompt logits) or of the last (`last_logit`), built as
  // the engine builds its steps.
  std::vector<int32_t> sequence = prompt;
  const int dp = executor.parallel().dp;
  auto micro_batch = [&](int begin, int end, bool all_logits, bool last_logit) {
    StepBatchBuilder batch(bs);
    batch.AddSequence(sequence, table, begin, end);
    if (all_logits) {
      for (int i = 0; i + 1 < end - begin; ++i) batch.AddLogitRow(i);
    }
    if (all_logits || last_logit) {
      batch.AddLogitRow(end - begin - 1,
                        on_device && last_logit
                            ? DeviceSampledRow(options.sampling, options.default_seed, sequence,
                                               n_prompt, sampleable)
                            : LogitRowSampling{});
    }
    return std::move(batch).Build();
  };
  // One step of `batches` as micro-batches of replica 0; the other replicas idle (empty
  // micro-batches) but still meet in the collectives.
  auto step = [&](std::vector<StepBatch> batches) {
    StepPlan plan;
    plan.replicas.resize(dp, std::vector<StepBatch>(batches.size()));
    plan.replicas[0] = std::move(batches);
    return executor.Execute(plan);
  };

  // Prefill, whole or in chunks. With pipeline stages, the chunks are micro-batches of one step,
  // so stage s works on chunk c while stage s + 1 works on chunk c - 1 (each stage writes its own
  // layers' KV in chunk order, which is all a later chunk needs).
  StepOutput out;
  // Chunks never exceed the step the executor's workspace was planned for.
  const StepLimits& limits = executor.step_limits();
  const int step_max = options.want_prompt_logits
                           ? std::min(limits.max_tokens, limits.max_logit_rows)
                           : limits.max_tokens;
  const int chunk =
      std::max(1, std::min(options.prefill_chunk > 0 ? options.prefill_chunk : n_prompt, step_max));
  std::vector<StepBatch> chunks;
  for (int begin = 0; begin < n_prompt; begin += chunk) {
    const int end = std::min(n_prompt, begin + chunk);
    chunks.push_back(micro_batch(begin, end, options.want_prompt_logits, end == n_prompt));
  }
  if (executor.parallel().pp > 1) {
    out = step(std::move(chunks));
  } else {
    for (StepBatch& batch : chunks) {
      StepOutput rows = step({std::move(batch)});
      out.tokens.insert(out.tokens.end(), rows.tokens.begin(), rows.tokens.end());
      out.logits.insert(out.logits.end(), rows.logits.begin(), rows.logits.end());
    }
  }
  if (options.want_prompt_logits) result.prompt_logits = out.logits;
  for (int i = 0; i < options.max_new_tokens; ++i) {
    const int32_t token =
        on_device
            ? out.tokens.back()
            : sampler.Sample(absl::MakeConstSpan(out.logits).subspan(out.logits.size() - vocab),
                             sampleable, sequence, result.tokens);
    result.tokens.push_back(token);
    sequence.push_back(token);
    if (std::find(options.stop_token_ids.begin(), options.stop_token_ids.end(), token) !=
        options.stop_token_ids.end()) {
      result.finish_reason = "stop";
      break;
    }
    if (i + 1 == options.max_new_tokens) break;
    const int p = static_cast<int>(sequence.size()) - 1;
    out = step({micro_batch(p, p + 1, false, true)});
  }
  return result;
}

}  // namespace tessera
