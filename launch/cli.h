// Command-line flags for the tessera subcommands, on CLI11 (Debian's libcli11-dev).
//
// Every subcommand builds a CLI::App with NewCommandLine and parses with ParseCommandLine, so all
// of them behave alike: `--name value` and `--name=value`; `--help` lists every flag with its
// default and one line; a flag given twice keeps its last value; an unknown flag is an error
// that names the nearest valid one; a malformed value is an error that names the flag. Usage
// errors exit 2, --help exits 0.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"

namespace tessera {

// An app for `tessera <command>`, described by `description` (the first line of its --help).
std::unique_ptr<CLI::App> NewCommandLine(const std::string& command,
                                         const std::string& description);

// Parses argv[2..] (argv[1] is the subcommand). Returns nullopt to go on, else the exit code once
// it has printed the help (stdout, exit 0) or the usage error (stderr, exit 2). `print` false
// prints nothing: the ranks other than 0 under mpirun, which see the same flags.
std::optional<int> ParseCommandLine(CLI::App& app, int argc, char** argv, bool print = true);

// The valid long flag of `app` nearest to `unknown` (edit distance), "" if none is close.
std::string NearestFlag(const CLI::App& app, const std::string& unknown);

// "1073741824", "512MiB", "2GiB", "1.5GB": a positive size in bytes.
absl::StatusOr<int64_t> ParseBytes(const std::string& text);
// "1,2,3" (whitespace around the commas is ignored; "" is the empty list).
absl::StatusOr<std::vector<int64_t>> ParseIntList(const std::string& text);

// Flags of the forms tessera uses: a comma-separated integer list, a size in bytes. The value is
// parsed when the flag is read (a malformed one is a usage error naming the flag); the returned
// option's count() says whether it was given.
CLI::Option* AddIntListFlag(CLI::App& app, const std::string& name, std::vector<int64_t>* out,
                            const std::string& help);
CLI::Option* AddBytesFlag(CLI::App& app, const std::string& name, int64_t* out,
                          const std::string& help);

}  // namespace tessera
