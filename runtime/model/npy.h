// Writes NumPy .npy files (format version 1.0), used for --prompt-logits-out and test fixtures.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera {

// Writes a C-order float32 array of `shape` to `path`.
absl::Status WriteNpyFloat32(const std::string& path, const std::vector<int64_t>& shape,
                             const float* data);

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;  // float32 arrays only (little-endian, C order)
};
absl::StatusOr<NpyArray> ReadNpyFloat32(const std::string& path);

}  // namespace tessera
