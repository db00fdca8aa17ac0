// Logs of the tessera commands, on spdlog (Debian's libspdlog-dev): one line per event on stderr
// with the time and the level,
//   2026-12-07 15:58:22.123 info  tessera serve: listening on 0.0.0.0:50051 ...
// Machine-readable output (--json, the stdout of run and tokenize, bench's tables) never goes
// through here. Use spdlog's calls (spdlog::info("{} blocks", n), spdlog::warn, spdlog::error)
// once InitLogging has run.
#pragma once

#include <string>

#include "spdlog/spdlog.h"

namespace tessera {

// Makes the default logger write "<time> <level> <command>: <message>" to stderr. `quiet` (the
// ranks other than 0, whose news rank 0 reports) keeps warnings and errors only.
void InitLogging(const std::string& command, bool quiet = false);

}  // namespace tessera
