// Writes .safetensors files: the embedded tiny model and tests that build checkpoints use it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/base/dtype.h"

namespace tessera {

struct TensorToWrite {
  std::string name;
  DType dtype = DType::kBF16;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // row-major, little-endian; size = product(shape) * DTypeSize(dtype)
};

// Header in the given order, data region 8-byte aligned, "__metadata__": {"format": "pt"}.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors);

}  // namespace tessera
