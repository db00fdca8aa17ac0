// tessera make-tiny-model --out DIR [--moe] [--seed S] [--layers L] [--vocab V]
// Writes a tiny random-weight Qwen3 checkpoint in the Hugging Face layout
// (runtime/model/tiny_model.h).
#include <cstdio>
#include <string>

#include "kernels/base/status_macros.h"
#include "launch/commands.h"
#include "launch/flags.h"
#include "runtime/model/tiny_model.h"

namespace tessera {
namespace {

absl::Status MakeTinyModel(int argc, char** argv) {
  Flags flags({"out", "seed", "layers", "vocab"}, {"moe"});
  RETURN_IF_ERROR(flags.Parse(argc, argv, 2));
  ASSIGN_OR_RETURN(std::string out, flags.RequireString("out"));
  TinyModelOptions options;
  options.moe = flags.GetBool("moe");
  ASSIGN_OR_RETURN(int64_t seed, flags.GetInt("seed", 0));
  ASSIGN_OR_RETURN(options.num_layers, flags.GetInt("layers", options.num_layers));
  ASSIGN_OR_RETURN(options.vocab_size, flags.GetInt("vocab", options.vocab_size));
  if (options.num_layers < 1 || options.vocab_size < 1) {
    return absl::InvalidArgumentError("--layers and --vocab must be positive");
  }
  options.seed = static_cast<uint64_t>(seed);
  RETURN_IF_ERROR(WriteTinyModel(out, options));
  std::printf("%s\n", out.c_str());
  return absl::OkStatus();
}

}  // namespace

int MakeTinyModelCommand(int argc, char** argv) {
  absl::Status status = MakeTinyModel(argc, argv);
  if (!status.ok()) {
    std::fprintf(stderr, "tessera make-tiny-model: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}

}  // namespace tessera
