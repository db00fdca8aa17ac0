// The tessera subcommands. Each takes the full argv; argv[1] is the subcommand name.
// Each returns the process exit code and prints its own errors to stderr.
#pragma once

namespace tessera {

int RunCommand(int argc, char** argv);         // tessera run        (cmd_run.cc)
int TokenizeCommand(int argc, char** argv);    // tessera tokenize   (cmd_tokenize.cc)
int DetokenizeCommand(int argc, char** argv);  // tessera detokenize (cmd_tokenize.cc)

}  // namespace tessera
