#include "launch/log.h"

#include <memory>

#include "spdlog/sinks/stdout_sinks.h"

namespace tessera {

void InitLogging(const std::string& command, bool quiet) {
  // NOTE: the unsynchronised stderr sink behind spdlog's own mutex (the _mt logger), without
  // colours: the lines go to files and `kubectl logs` as often as to a terminal.
  auto logger = std::make_shared<spdlog::logger>("tessera",
                                                 std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %-7l " + command + ": %v");
  logger->set_level(quiet ? spdlog::level::warn : spdlog::level::info);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(std::move(logger));
}

}  // namespace tessera
