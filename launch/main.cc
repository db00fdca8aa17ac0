// The tessera executable: one binary, one subcommand per job. `tessera --help` lists them;
// `tessera COMMAND --help` lists a command's flags with their defaults.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "launch/commands.h"
#include "launch/log.h"

namespace {

struct Subcommand {
  const char* name;
  int (*run)(int, char**);
  const char* help;
};

constexpr Subcommand kSubcommands[] = {
    {"run", tessera::RunCommand, "generate tokens from a prompt (offline)"},
    {"serve", tessera::ServeCommand,
     "serve the model over gRPC and HTTP (rank 0 coordinates; run under mpirun)"},
    {"client", tessera::ClientCommand,
     "talk to a running server: generate, chat, tokenize, health, info"},
    {"bench", tessera::BenchCommand,
     "measure TTFT, decode and throughput (dummy weights at real shapes)"},
    {"bench-comm", tessera::BenchCommCommand,
     "measure all-reduce, all-to-all, reduce-scatter, all-gather (run under mpirun)"},
    {"bench-serve", tessera::BenchServeCommand,
     "benchmark a running server: throughput, TTFT/TPOT/ITL percentiles, goodput"},
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
  std::fprintf(out, "\n'tessera <command> --help' lists a command's flags and their defaults.\n");
}

// The subcommand nearest to `name` by edit distance, or null when none is close.
const Subcommand* Nearest(const std::string& name) {
  const Subcommand* best = nullptr;
  size_t best_distance = 3;  // a typo, not another word
  for (const auto& sub : kSubcommands) {
    const std::string candidate = sub.name;
    std::vector<size_t> row(candidate.size() + 1);
    for (size_t j = 0; j <= candidate.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= name.size(); ++i) {
      size_t diagonal = row[0];
      row[0] = i;
      for (size_t j = 1; j <= candidate.size(); ++j) {
        const size_t above = row[j];
        row[j] = std::min(
            {row[j] + 1, row[j - 1] + 1, diagonal + (name[i - 1] != candidate[j - 1] ? 1 : 0)});
        diagonal = above;
      }
    }
    if (row[candidate.size()] < best_distance) {
      best_distance = row[candidate.size()];
      best = &sub;
    }
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    PrintUsage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (const auto& sub : kSubcommands) {
    if (!std::strcmp(argv[1], sub.name)) {
      tessera::InitLogging(std::string("tessera ") + sub.name);  // stderr, time and level
      return sub.run(argc, argv);
    }
  }
  if (const Subcommand* nearest = Nearest(argv[1])) {
    std::fprintf(stderr, "tessera: unknown command '%s' (did you mean '%s'?)\n", argv[1],
                 nearest->name);
  } else {
    std::fprintf(stderr, "tessera: unknown command '%s'\n", argv[1]);
  }
  PrintUsage(stderr);
  return 2;
}
