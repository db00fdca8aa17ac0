// The commit this binary was built from, as benchmarks record it (launch/build_commit.cmake
// writes the definition at build time, so a rebuild after a new commit reports the new one).
#pragma once

namespace tessera {

// "0123456789ab", "0123456789ab-dirty" (tracked files changed), or "unknown".
const char* BuildCommit();

}  // namespace tessera
