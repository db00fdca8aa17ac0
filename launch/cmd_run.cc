// tessera run: offline generation from a prompt of token ids (or text).
//
//   [mpirun -np N] tessera run [--model DIR] [--device cpu|cuda] --prompt-ids 1,2,3
//               --max-new-tokens N [--temperature T] [--top-k K] [--top-p P] [--min-p P]
//               [--seed S] [--prompt-logits-out FILE.npy] [--json] [--ignore-eos]
//               [--prefill-chunk C] [--tp T] [--pp P] [--ep E] [--dp D]
//               [--collective-timeout SECONDS]          (tessera run --help: every flag)
//
// Without --model it runs the embedded default (a tiny random-weight Qwen3 written on first use).
// Under mpirun every rank loads its shard; rank 0 coordinates and alone prints results.
// With --json it prints one object: {"prompt_tokens": [...], "tokens": [...], ...}.
// --max-new-tokens 0 with --prompt-logits-out scores the prompt: a float32 .npy of shape
// [n_prompt, vocab] whose row i holds the logits after token i.
#include <algorithm>
#include <cstdio>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/log.h"
#include "launch/mpi_session.h"
#include "launch/rank.h"
#include "nlohmann/json.hpp"
#include "runtime/engine/generate.h"
#include "runtime/model/npy.h"

namespace tessera {
namespace {

struct RunFlags {
  RankOptions rank;
  CLI::Option* prompt_ids_flag = nullptr;
  std::string prompt;
  std::vector<int64_t> prompt_ids;
  int64_t max_new_tokens = 16;
  // Unset: the model's generation_config.json (greedy without one).
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  std::optional<int> top_k;
  double presence_penalty = 0, frequency_penalty = 0;
  uint64_t seed = 0;
  int prefill_chunk = 0;
  std::string prompt_logits_out;
  bool json = false, ignore_eos = false;
};

void AddRunFlags(CLI::App& app, RunFlags* f) {
  AddModelFlags(app, &f->rank);
  CLI::Option* text = app.add_option("--prompt", f->prompt, "prompt text (needs a tokenizer)");
  f->prompt_ids_flag =
      AddIntListFlag(app, "--prompt-ids", &f->prompt_ids, "prompt token ids, e.g. 1,2,3")
          ->excludes(text);
  app.add_option("--max-new-tokens", f->max_new_tokens, "tokens to generate");
  app.add_option("--temperature", f->temperature,
                 "sampling temperature, 0 greedy (default: the model's generation_config.json)");
  app.add_option("--top-k", f->top_k, "top-k sampling, 0 off (default: the model's)");
  app.add_option("--top-p", f->top_p, "nucleus sampling in (0, 1] (default: the model's)");
  app.add_option("--min-p", f->min_p, "min-p sampling in [0, 1] (default: the model's)");
  app.add_option("--repetition-penalty", f->repetition_penalty,
                 "HF repetition penalty, 1 off (default: the model's)");
  app.add_option("--presence-penalty", f->presence_penalty, "OpenAI presence penalty in [-2, 2]");
  app.add_option("--frequency-penalty", f->frequency_penalty,
                 "OpenAI frequency penalty in [-2, 2]");
  app.add_option("--seed", f->seed, "sampling seed");
  app.add_flag("--ignore-eos", f->ignore_eos, "generate past end-of-sequence tokens");
  app.add_option("--prefill-chunk", f->prefill_chunk,
                 "prefill in chunks of this many tokens (0: the whole prompt in one step)");
  app.add_option("--prompt-logits-out", f->prompt_logits_out,
                 "write the prompt's logits, float32 .npy [n_prompt, vocab], row i after token i")
      ->type_name("FILE");
  app.add_flag("--json", f->json,
               "print one JSON object: prompt_tokens, tokens, text, finish_reason, usage, model");
  AddParallelFlags(app, &f->rank);
  AddKvCacheFlags(app, &f->rank, "--kv-blocks,--num-kv-blocks",
                  "whole blocks for the prompt and the new tokens", /*memory_flags=*/false);
}

// Errors before loading are the same on every rank (same flags, same files): rank 0 reports them.
// Errors while loading are per rank: each failing rank reports its own, tagged with its rank.
absl::Status Run(MpiSession& mpi, RunFlags& f) {
  ASSIGN_OR_RETURN(std::unique_ptr<Rank> rank, OpenRank(mpi, f.rank));
  const ModelDirectory& model = rank->model;
  const ModelConfig& config = model.config;
  std::vector<int64_t> prompt64 = f.prompt_ids;
  if (!f.prompt.empty()) {
    if (!model.tokenizer) {
      return absl::InvalidArgumentError(
          absl::StrCat(model.dir, " has no tokenizer: use --prompt-ids"));
    }
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, model.tokenizer->Encode(f.prompt));
    prompt64.assign(ids.begin(), ids.end());
  } else if (f.prompt_ids_flag->count() == 0) {
    return absl::InvalidArgumentError("--prompt-ids (or --prompt) is required");
  }
  if (f.max_new_tokens < 0) return absl::InvalidArgumentError("--max-new-tokens must be >= 0");

  GenerateOptions options;
  options.sampling = model.default_sampling;
  options.sampleable_vocab = model.sampleable_vocab;
  SamplingParams& s = options.sampling;
  if (f.temperature) s.temperature = static_cast<float>(*f.temperature);
  if (f.top_k) s.top_k = *f.top_k;
  if (f.top_p) s.top_p = static_cast<float>(*f.top_p);
  if (f.min_p) s.min_p = static_cast<float>(*f.min_p);
  if (f.repetition_penalty) s.repetition_penalty = static_cast<float>(*f.repetition_penalty);
  s.presence_penalty = static_cast<float>(f.presence_penalty);
  s.frequency_penalty = static_cast<float>(f.frequency_penalty);
  s.seed = f.seed;
  RETURN_IF_ERROR(ValidateSamplingParams(s));
  options.max_new_tokens = static_cast<int>(f.max_new_tokens);
  options.prefill_chunk = f.prefill_chunk;
  options.want_prompt_logits = !f.prompt_logits_out.empty();
  if (!f.ignore_eos) options.stop_token_ids = model.eos_token_ids;
  // Validate the request before reading any weight.
  RETURN_IF_ERROR(ValidatePrompt(config, prompt64, f.max_new_tokens));

  // KV: whole blocks for this one sequence, unless given.
  const int64_t bs = f.rank.block_size;
  const int64_t needed_blocks =
      (static_cast<int64_t>(prompt64.size()) + f.max_new_tokens + bs - 1) /
      std::max<int64_t>(1, bs);
  if (f.rank.num_kv_blocks == 0) f.rank.num_kv_blocks = needed_blocks;
  // The largest step: the prompt (or a chunk of it) with every row's logits when asked for.
  const int64_t chunk = f.prefill_chunk;
  auto limits_for = [&](const ModelConfig&, int) {
    StepLimits limits;
    limits.max_tokens = static_cast<int>(std::max<int64_t>(
        1, chunk > 0 ? std::min<int64_t>(chunk, prompt64.size()) : prompt64.size()));
    limits.max_logit_rows = options.want_prompt_logits ? limits.max_tokens : 1;
    limits.max_seqs = 1;
    limits.max_blocks_per_seq = static_cast<int>(std::max<int64_t>(1, needed_blocks));
    limits.max_seq_len = static_cast<int>(prompt64.size() + f.max_new_tokens);
    return limits;
  };
  RETURN_IF_ERROR(LoadRank(mpi, f.rank, limits_for, *rank));
  if (ServeStepsAsWorker(mpi, *rank)) return absl::OkStatus();

  Executor& executor = *rank->executor;
  std::vector<int32_t> prompt(prompt64.begin(), prompt64.end());
  absl::StatusOr<GenerateResult> generated = Generate(executor, prompt, options);
  executor.Shutdown();
  if (!generated.ok()) return generated.status();
  GenerateResult& result = *generated;

  if (options.want_prompt_logits) {
    RETURN_IF_ERROR(WriteNpyFloat32(f.prompt_logits_out,
                                    {static_cast<int64_t>(prompt.size()), config.vocab_size},
                                    result.prompt_logits.data()));
  }
  if (f.json) {
    nlohmann::json out = {
        {"prompt_tokens", prompt},
        {"tokens", result.tokens},
        {"finish_reason", result.finish_reason},
        {"usage", {{"prompt_tokens", prompt.size()}, {"completion_tokens", result.tokens.size()}}},
        {"model", model.dir}};
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
  RunFlags flags;
  flags.rank.command = "tessera run";
  std::unique_ptr<CLI::App> app =
      NewCommandLine("run", "Offline generation from a prompt (rank 0 prints the result).");
  AddRunFlags(*app, &flags);
  if (std::optional<int> code = ParseCommandLine(*app, argc, argv, mpi.rank() == 0)) return *code;
  InitLogging(flags.rank.command, /*quiet=*/mpi.rank() != 0);
  return ExitCode(mpi, Run(mpi, flags));
}

}  // namespace tessera
