// The tessera subcommands. Each takes the full argv; argv[1] is the subcommand name.
// Each returns the process exit code and prints its own errors to stderr.
#pragma once

namespace tessera {

int RunCommand(int argc, char** argv);     // tessera run             (cmd_run.cc)
int ServeCommand(int argc, char** argv);   // tessera serve           (cmd_serve.cc)
int ClientCommand(int argc, char** argv);  // tessera client          (cmd_client.cc)
int BenchCommand(int argc, char** argv);   // tessera bench           (cmd_bench.cc)
int BenchCommCommand(int argc,
                     char** argv);  // tessera bench-comm      (cmd_bench_comm.cc)
int BenchServeCommand(int argc,
                      char** argv);  // tessera bench-serve     (cmd_bench_serve.cc)
int MakeTinyModelCommand(int argc,
                         char** argv);           // tessera make-tiny-model (cmd_make_tiny_model.cc)
int TokenizeCommand(int argc, char** argv);      // tessera tokenize        (cmd_tokenize.cc)
int DetokenizeCommand(int argc, char** argv);    // tessera detokenize      (cmd_tokenize.cc)
int ChatTemplateCommand(int argc, char** argv);  // tessera chat-template   (cmd_chat_template.cc)

}  // namespace tessera
