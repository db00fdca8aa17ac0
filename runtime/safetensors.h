// Memory-mapped safetensors files and checkpoint directories (single file or sharded).
//
// Format: 8-byte little-endian header length N, N bytes of JSON header, then the data region.
// The header maps tensor name -> {"dtype", "shape", "data_offsets": [begin, end]} (offsets are
// relative to the data region) plus an optional "__metadata__" object of strings.
// Header parsing is a pure function so it can be fuzzed; it rejects, with an error naming the
// file: header length past the file, invalid JSON, unknown dtype, offsets past the end or
// overlapping, a byte span that is not dtype size x product(shape), and integer overflow.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/base/dtype.h"

namespace tessera {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t data_begin = 0;  // relative to the data region
  uint64_t data_end = 0;
  int64_t num_elements() const;
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in file order
  std::map<std::string, std::string> metadata;
};

// Parses the JSON header. `data_size` is the size of the data region (file size - 8 - N).
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view header_json,
                                                         uint64_t data_size,
                                                         std::string_view file_name);

// One memory-mapped .safetensors file.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  const TensorInfo* Find(std::string_view name) const;  // nullptr if absent
  // Raw bytes of a tensor, inside the mapping.
  const uint8_t* Data(const TensorInfo& info) const { return data_ + info.data_begin; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  SafetensorsHeader header_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in header_.tensors
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  const uint8_t* data_ = nullptr;
};

// A checkpoint directory: DIR/model.safetensors, or DIR/model.safetensors.index.json naming the
// shard of each tensor ({"weight_map": {name: file}}), or (if neither exists) every
// DIR/*.safetensors. Files are mapped lazily on first use, so a rank touches only its shards.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  struct Entry {
    const SafetensorsFile* file;
    const TensorInfo* info;
  };
  // Errors name the tensor and, where known, the file.
  absl::StatusOr<Entry> Find(std::string_view name) const;
  bool Contains(std::string_view name) const;
  std::vector<std::string> TensorNames() const;  // sorted

  // Reads a rectangular slice of a tensor as float32 into `dst` (row-major, dense):
  // along dimension `dim`, elements [start, start + length); all of every other dimension.
  // length < 0 means "to the end". `dst` must hold the slice's element count.
  absl::Status ReadFloat(std::string_view name, int dim, int64_t start, int64_t length,
                         float* dst) const;
  // Convenience: the whole tensor.
  absl::Status ReadFloat(std::string_view name, float* dst) const {
    return ReadFloat(name, 0, 0, -1, dst);
  }

  const std::string& dir() const { return dir_; }

 private:
  Checkpoint() = default;
  absl::StatusOr<const SafetensorsFile*> FileFor(std::string_view name) const;
  std::string dir_;
  std::map<std::string, std::string, std::less<>> tensor_to_file_;  // name -> file name
  mutable std::map<std::string, std::unique_ptr<SafetensorsFile>, std::less<>> open_files_;
};

}  // namespace tessera
