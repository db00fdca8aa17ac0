// tessera make-tiny-model --out DIR [--moe] [--seed S] [--layers L] [--vocab V]  (--help)
// Writes a tiny random-weight Qwen3 checkpoint in the Hugging Face layout
// (runtime/model/tiny_model.h).
#include <cstdio>
#include <string>

#include "kernels/base/status_macros.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "runtime/model/tiny_model.h"

namespace tessera {
namespace {

absl::Status MakeTinyModel(const std::string& out, TinyModelOptions options) {
  if (options.num_layers < 1 || options.vocab_size < 1) {
    return absl::InvalidArgumentError("--layers and --vocab must be positive");
  }
  RETURN_IF_ERROR(WriteTinyModel(out, options));
  std::printf("%s\n", out.c_str());
  return absl::OkStatus();
}

}  // namespace

int MakeTinyModelCommand(int argc, char** argv) {
  std::string out;
  TinyModelOptions options;
  std::unique_ptr<CLI::App> app =
      NewCommandLine("make-tiny-model",
                     "Write a tiny random-weight Qwen3 checkpoint (config.json + safetensors).");
  app->add_option("--out", out, "directory to write")->type_name("DIR")->required();
  app->add_flag("--moe", options.moe, "a mixture-of-experts model (qwen3_moe)");
  app->add_option("--seed", options.seed, "seed of the random weights");
  app->add_option("--layers", options.num_layers, "decoder layers");
  app->add_option("--vocab", options.vocab_size, "vocabulary size");
  if (std::optional<int> code = ParseCommandLine(*app, argc, argv)) return *code;
  absl::Status status = MakeTinyModel(out, options);
  if (!status.ok()) {
    std::fprintf(stderr, "tessera make-tiny-model: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}

}  // namespace tessera
