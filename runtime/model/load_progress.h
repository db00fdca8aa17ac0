// A hook the weight loaders call as they read checkpoint bytes, so that a command can report
// loading progress (launch/ logs bytes, GB/s and per-file totals). Kept to one function type and
// a process-wide slot on purpose: a loader only calls ReportLoadProgress, whatever its structure.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace tessera {

// `file`: the checkpoint file the bytes were read from; `bytes`: how many were just read (as
// stored, before any conversion). Called from whichever thread reads, possibly several at once.
using LoadProgressFn = std::function<void(const std::string& file, int64_t bytes)>;

// Installs `fn` (empty: none) until the next call. Not thread-safe against loads in progress:
// set it before loading, clear it after.
void SetLoadProgress(LoadProgressFn fn);

// What loaders call for every read; a no-op without a hook.
void ReportLoadProgress(const std::string& file, int64_t bytes);

}  // namespace tessera
