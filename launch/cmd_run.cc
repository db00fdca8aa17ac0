// tessera run: offline generation from a prompt of token ids.
//
//   [mpirun -np N] tessera run [--model DIR] [--device cpu|cuda] --prompt-ids 1,2,3
//               --max-new-tokens N [--temperature T] [--top-k K] [--top-p P] [--min-p P]
//               [--seed S] [--prompt-logits-out FILE.npy] [--json] [--ignore-eos]
//               [--prefill-chunk C] [--tp T] [--pp P] [--ep E] [--dp D]
//               [--collective-timeout SECONDS]
//
// Without --model it runs the embedded default (a tiny random-weight Qwen3 written on first use).
// Under mpirun every rank loads its shard; rank 0 coordinates and alone prints results.
// With --json it prints one object: {"prompt_tokens": [...], "tokens": [...], ...}.
// --max-new-tokens 0 with --prompt-logits-out scores the prompt: a float32 .npy of shape
// [n_prompt, vocab] whose row i holds the logits after token i.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops.h"
#include "launch/commands.h"
#include "launch/device.h"
#include "launch/flags.h"
#include "launch/model_dir.h"
#include "launch/mpi_session.h"
#include "nlohmann/json.hpp"
#include "runtime/engine/executor.h"
#include "runtime/engine/generate.h"
#include "runtime/model/model_config.h"
#include "runtime/model/npy.h"
#include "runtime/model/qwen3.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/tiny_model.h"

namespace tessera {
namespace {

// Errors before loading are the same on every rank (same flags, same files): rank 0 reports them.
// Errors while loading are per rank: each failing rank reports its own, tagged with its rank.
absl::Status Run(MpiSession& mpi, int argc, char** argv, bool* per_rank_error) {
  Flags flags({"model",
               "device",
               "prompt-ids",
               "max-new-tokens",
               "temperature",
               "top-k",
               "top-p",
               "min-p",
               "seed",
               "prompt-logits-out",
               "prefill-chunk",
               "repetition-penalty",
               "presence-penalty",
               "frequency-penalty",
               "prompt",
               "tp",
               "pp",
               "ep",
               "dp",
               "collective-timeout",
               "kv-blocks",
               "block-size"},
              {"json", "ignore-eos"});
  RETURN_IF_ERROR(flags.Parse(argc, argv, 2));
  if (!flags.positional().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unexpected argument '", flags.positional()[0], "'"));
  }
  const std::string device = flags.GetString("device").value_or("cpu");
  ASSIGN_OR_RETURN(ModelDirectory model, ResolveModelDirectory(flags.GetString("model")));
  const std::string& model_dir = model.dir;
  const ModelConfig& config = model.config;
  std::vector<int64_t> prompt64;
  if (auto text = flags.GetString("prompt")) {
    if (flags.Has("prompt-ids"))
      return absl::InvalidArgumentError("give --prompt or --prompt-ids, not both");
    if (!model.tokenizer) {
      return absl::InvalidArgumentError(
          absl::StrCat(model_dir, " has no tokenizer: use --prompt-ids"));
    }
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, model.tokenizer->Encode(*text));
    prompt64.assign(ids.begin(), ids.end());
  } else {
    if (!flags.Has("prompt-ids"))
      return absl::InvalidArgumentError("--prompt-ids (or --prompt) is required");
    ASSIGN_OR_RETURN(prompt64, flags.GetIntList("prompt-ids"));
  }
  ASSIGN_OR_RETURN(int64_t max_new, flags.GetInt("max-new-tokens", 16));
  if (max_new < 0) return absl::InvalidArgumentError("--max-new-tokens must be >= 0");

  GenerateOptions options;
  options.sampling = model.default_sampling;
  options.sampleable_vocab = model.sampleable_vocab;
  ASSIGN_OR_RETURN(double temperature,
                   flags.GetDouble("temperature", options.sampling.temperature));
  ASSIGN_OR_RETURN(int64_t top_k, flags.GetInt("top-k", options.sampling.top_k));
  ASSIGN_OR_RETURN(double top_p, flags.GetDouble("top-p", options.sampling.top_p));
  ASSIGN_OR_RETURN(double min_p, flags.GetDouble("min-p", options.sampling.min_p));
  ASSIGN_OR_RETURN(double rep,
                   flags.GetDouble("repetition-penalty", options.sampling.repetition_penalty));
  ASSIGN_OR_RETURN(double presence, flags.GetDouble("presence-penalty", 0.0));
  ASSIGN_OR_RETURN(double frequency, flags.GetDouble("frequency-penalty", 0.0));
  ASSIGN_OR_RETURN(int64_t seed, flags.GetInt("seed", 0));
  ASSIGN_OR_RETURN(int64_t chunk, flags.GetInt("prefill-chunk", 0));
  options.sampling.temperature = static_cast<float>(temperature);
  options.sampling.top_k = static_cast<int>(top_k);
  options.sampling.top_p = static_cast<float>(top_p);
  options.sampling.min_p = static_cast<float>(min_p);
  options.sampling.repetition_penalty = static_cast<float>(rep);
  options.sampling.presence_penalty = static_cast<float>(presence);
  options.sampling.frequency_penalty = static_cast<float>(frequency);
  options.sampling.seed = static_cast<uint64_t>(seed);
  RETURN_IF_ERROR(ValidateSamplingParams(options.sampling));
  options.max_new_tokens = static_cast<int>(max_new);
  options.prefill_chunk = static_cast<int>(chunk);
  const auto logits_out = flags.GetString("prompt-logits-out");
  options.want_prompt_logits = logits_out.has_value();

  ASSIGN_OR_RETURN(int64_t tp, flags.GetInt("tp", 1));
  ASSIGN_OR_RETURN(int64_t pp, flags.GetInt("pp", 1));
  ASSIGN_OR_RETURN(int64_t ep, flags.GetInt("ep", 1));
  ASSIGN_OR_RETURN(int64_t dp, flags.GetInt("dp", 0));
  ASSIGN_OR_RETURN(double timeout,
                   flags.GetDouble("collective-timeout", CollectiveTimeoutSeconds()));
  CollectiveTimeoutSeconds() = timeout;

  if (!flags.GetBool("ignore-eos")) options.stop_token_ids = model.eos_token_ids;
  // Validate the layout and the request before reading any weight.
  ASSIGN_OR_RETURN(
      ParallelConfig parallel,
      ParallelConfig::Create(mpi.size(), mpi.rank(), static_cast<int>(tp), static_cast<int>(pp),
                             static_cast<int>(ep), static_cast<int>(dp), ModelDimsOf(config)));
  RETURN_IF_ERROR(ValidatePrompt(config, prompt64, max_new));
  ASSIGN_OR_RETURN(int64_t block_size, flags.GetInt("block-size", 16));
  if (block_size < 1) return absl::InvalidArgumentError("--block-size must be >= 1");
  const int64_t needed_blocks =
      (static_cast<int64_t>(prompt64.size()) + max_new + block_size - 1) / block_size;
  ASSIGN_OR_RETURN(int64_t kv_blocks, flags.GetInt("kv-blocks", needed_blocks));

  // The largest step: the prompt (or a chunk of it) with every row's logits when asked for.
  StepLimits limits;
  limits.max_tokens = static_cast<int>(std::max<int64_t>(
      1, chunk > 0 ? std::min<int64_t>(chunk, prompt64.size()) : prompt64.size()));
  limits.max_logit_rows = options.want_prompt_logits ? limits.max_tokens : 1;
  limits.max_seqs = 1;
  limits.max_blocks_per_seq = static_cast<int>(std::max<int64_t>(1, needed_blocks));
  limits.max_seq_len = static_cast<int>(prompt64.size() + max_new);

  // Communicators first (collective, on every rank), then this rank's shard; every rank learns
  // whether any rank failed before the first step.
  ASSIGN_OR_RETURN(RankCompute compute, SetUpRankCompute(device, mpi));
  std::unique_ptr<Backend>& backend = compute.backend;
  auto executor = std::make_unique<Executor>(config, parallel, compute.world);
  const auto load_start = std::chrono::steady_clock::now();
  absl::Status loaded = [&]() -> absl::Status {
    if (FaultInjected("crash-load", mpi.rank())) std::abort();
    if (FaultInjected("fail-load", mpi.rank())) {
      return absl::InternalError("injected load failure (TESSERA_FAULT)");
    }
    ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(model_dir));
    return executor->Load(*checkpoint, *backend, static_cast<int>(kv_blocks),
                          static_cast<int>(block_size), limits);
  }();
  if (mpi.AnyFailed(loaded.ok())) {
    *per_rank_error = true;
    if (!loaded.ok()) return loaded;
    return absl::AbortedError("another rank failed to load its shard");
  }
  ReportLoad(mpi, "tessera run",
             std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count(),
             &executor->model().load_stats());
  if (FaultInjected("hang-step", mpi.rank())) {
    for (;;) pause();
  }
  if (mpi.rank() != 0) {
    executor->RunWorker();
    return absl::OkStatus();
  }
  std::vector<int32_t> prompt(prompt64.begin(), prompt64.end());
  absl::StatusOr<GenerateResult> generated = Generate(*executor, prompt, options);
  executor->Shutdown();
  if (!generated.ok()) return generated.status();
  GenerateResult& result = *generated;

  if (logits_out) {
    RETURN_IF_ERROR(WriteNpyFloat32(*logits_out,
                                    {static_cast<int64_t>(prompt.size()), config.vocab_size},
                                    result.prompt_logits.data()));
  }
  if (flags.GetBool("json")) {
    nlohmann::json out = {
        {"prompt_tokens", prompt},
        {"tokens", result.tokens},
        {"finish_reason", result.finish_reason},
        {"usage", {{"prompt_tokens", prompt.size()}, {"completion_tokens", result.tokens.size()}}},
        {"model", model_dir}};
    if (model.tokenizer) {
      absl::StatusOr<std::string> text = model.tokenizer->Decode(result.tokens, true);
      if (text.ok()) out["text"] = *text;
    }
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else if (model.tokenizer) {
    absl::StatusOr<std::string> text = model.tokenizer->Decode(result.tokens, true);
    std::printf("%s\n", text.ok() ? text->c_str() : "");
  } else {
    std::string line;
    for (size_t i = 0; i < result.tokens.size(); ++i) {
      absl::StrAppend(&line, i ? " " : "", result.tokens[i]);
    }
    std::printf("%s\n", line.c_str());
  }
  return absl::OkStatus();
}

}  // namespace

int RunCommand(int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  bool per_rank = false;
  absl::Status status = Run(mpi, argc, argv, &per_rank);
  if (status.ok()) return 0;
  if (per_rank) {
    if (status.code() != absl::StatusCode::kAborted || mpi.rank() == 0) {
      std::fprintf(stderr, "tessera run: [rank %d] %s\n", mpi.rank(),
                   std::string(status.message()).c_str());
    }
  } else if (mpi.rank() == 0) {
    std::fprintf(stderr, "tessera run: %s\n", std::string(status.message()).c_str());
  }
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

}  // namespace tessera
