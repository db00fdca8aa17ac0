// The tessera executable: one binary, one subcommand per job.
#include <cstdio>
#include <cstring>

#include "launch/commands.h"

namespace {

struct Subcommand {
  const char* name;
  int (*run)(int, char**);
  const char* help;
};

constexpr Subcommand kSubcommands[] = {
    {"run", tessera::RunCommand, "generate tokens from a prompt of token ids (offline)"},
    {"serve", tessera::ServeCommand,
     "serve the model over gRPC (rank 0 coordinates; run under mpirun)"},
    {"client", tessera::ClientCommand,
     "talk to a running server: generate, chat, tokenize, health, info"},
    {"bench", tessera::BenchCommand,
     "measure TTFT, decode and throughput (dummy weights at real shapes)"},
    {"bench-comm", tessera::BenchCommCommand,
     "measure all-reduce, all-to-all, reduce-scatter, all-gather (run under mpirun)"},
    {"make-tiny-model", tessera::MakeTinyModelCommand,
     "write a tiny random-weight Qwen3 checkpoint (config.json + safetensors)"},
    {"tokenize", tessera::TokenizeCommand, "text -> token ids with a model's tokenizer"},
    {"detokenize", tessera::DetokenizeCommand, "token ids -> text with a model's tokenizer"},
    {"chat-template", tessera::ChatTemplateCommand,
     "render a chat request with a model's chat template (text, or text and ids)"},
};

void PrintUsage(FILE* out) {
  std::fprintf(out, "usage: tessera <command> [flags]\n\ncommands:\n");
  for (const auto& sub : kSubcommands) std::fprintf(out, "  %-16s %s\n", sub.name, sub.help);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    PrintUsage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (const auto& sub : kSubcommands) {
    if (!std::strcmp(argv[1], sub.name)) return sub.run(argc, argv);
  }
  std::fprintf(stderr, "tessera: unknown command '%s'\n", argv[1]);
  PrintUsage(stderr);
  return 2;
}
