#include "runtime/model/load_progress.h"

#include <utility>

namespace tessera {
namespace {

LoadProgressFn& Hook() {
  static LoadProgressFn hook;
  return hook;
}

}  // namespace

void SetLoadProgress(LoadProgressFn fn) { Hook() = std::move(fn); }

void ReportLoadProgress(const std::string& file, int64_t bytes) {
  if (const LoadProgressFn& hook = Hook()) hook(file, bytes);
}

}  // namespace tessera
