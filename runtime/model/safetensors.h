// Memory-mapped safetensors files and checkpoint directories (single file or sharded).
//
// Format: 8-byte little-endian header length N, N bytes of JSON header, then the data region.
// The header maps tensor name -> {"dtype", "shape", "data_offsets": [begin, end]} (offsets are
// relative to the data region) plus an optional "__metadata__" object of strings (or null).
// Header parsing is a pure function so it can be fuzzed; it rejects, with an error naming the
// file (and the tensor, where there is one): a header length past the file or above
// kMaxSafetensorsHeaderSize, invalid JSON, a non-object header, entries with missing or mistyped
// fields, dtypes tessera does not read (anything but BF16, F16, F32, F8_E4M3, I32, I64), negative
// dimensions, offsets with begin > end or past the data region, a byte span that is not
// dtype size x product(shape), and integer overflow in that product.
//
// Layout rule, as the reference implementation (huggingface/safetensors, checked against the
// Python package 0.8) enforces it: the tensors' spans, sorted by offset, tile the data region
// exactly. So overlapping spans, gaps between tensors and bytes after the last tensor are all
// errors. Zero-byte tensors may sit at any offset where they do not split another tensor's span.
// Extra keys in a tensor entry are ignored.
//
// Error codes: DataLoss for a malformed or inconsistent file (corrupt, truncated, not
// safetensors); InvalidArgument for a well-formed file tessera cannot use (unsupported dtype) and
// for bad read requests (slice out of bounds, integer tensor read as float); NotFound for missing
// files and tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
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
  std::vector<TensorInfo> tensors;  // in file order: sorted by data offset (then by name)
  std::map<std::string, std::string> metadata;
};

// The largest header accepted, as in the reference implementation. Real headers take on the
// order of 100 bytes per tensor. JSON nested deeper than 128 levels is refused as well.
inline constexpr uint64_t kMaxSafetensorsHeaderSize = 100'000'000;

// Parses the JSON header. `data_size` is the size of the data region (file size - 8 - N).
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view header_json,
                                                         uint64_t data_size,
                                                         std::string_view file_name);

// A whole file image: the length prefix, the header and where the data region starts.
struct SafetensorsImage {
  SafetensorsHeader header;
  uint64_t data_offset = 0;  // 8 + N: the data region is bytes [data_offset, size)
};
// Validates a complete file image (what SafetensorsFile::Open maps; what the fuzzer feeds). The
// length prefix is checked against the image size and kMaxSafetensorsHeaderSize before anything
// is allocated; the header is parsed in place.
absl::StatusOr<SafetensorsImage> ParseSafetensorsImage(absl::Span<const uint8_t> image,
                                                       std::string_view file_name);

// One memory-mapped .safetensors file (read-only, MAP_PRIVATE), validated by
// ParseSafetensorsImage when opened. Immutable after Open, so it may be shared between threads.
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
  // Where the data region starts in the file (8 + header length): a tensor's bytes are at file
  // offset data_offset() + data_begin, for readers that pread rather than touch the mapping.
  uint64_t data_offset() const { return data_offset_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  SafetensorsHeader header_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in header_.tensors
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  const uint8_t* data_ = nullptr;
  uint64_t data_offset_ = 0;
};

// A checkpoint directory, in this order of preference:
//   DIR/model.safetensors.index.json naming the shard of each tensor ({"weight_map": {name: file}},
//     files are plain names inside DIR): sharded. Open checks the index and that every shard file
//     exists, but maps a shard only on first use, so a rank touches only its shards. When a
//     shard is mapped, every tensor the index places in it must be there.
//   DIR/model.safetensors: one file, opened (mapped and validated) by Open.
//   every DIR/*.safetensors: opened by Open; a tensor name in two files is an error.
// Every method may be called from several threads at once (a mutex guards the lazy opening).
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
  // BF16, F16, F32 and F8_E4M3 convert; integer dtypes are an error. A 0-d tensor reads as shape
  // [1]. Only the slice is touched: one conversion per contiguous run, of which there is one per
  // index of the dimensions before `dim`.
  absl::Status ReadFloat(std::string_view name, int dim, int64_t start, int64_t length,
                         float* dst) const;
  // Convenience: the whole tensor.
  absl::Status ReadFloat(std::string_view name, float* dst) const {
    return ReadFloat(name, 0, 0, -1, dst);
  }

  // Where the slice ReadFloat(name, dim, start, length) reads lies in its file, after the same
  // checks (with the same errors): `runs` runs of `run_bytes` contiguous bytes, the first at
  // byte `file_offset` of the file, each `stride` bytes after the one before, in the dense
  // row-major order of the slice. A slice that is one contiguous span is one run.
  struct SliceBytes {
    const SafetensorsFile* file = nullptr;
    const TensorInfo* info = nullptr;
    int64_t elements = 0;  // of the slice
    uint64_t file_offset = 0;
    uint64_t run_bytes = 0;
    uint64_t stride = 0;
    int64_t runs = 0;  // 0 when the slice is empty
  };
  absl::StatusOr<SliceBytes> LocateSlice(std::string_view name, int dim, int64_t start,
                                         int64_t length) const;

  const std::string& dir() const { return dir_; }

 private:
  Checkpoint() = default;
  absl::StatusOr<const SafetensorsFile*> FileFor(std::string_view name) const;
  absl::Status CheckShardHoldsIndexedTensors(const std::string& file_name,
                                             const SafetensorsFile& file) const;
  std::string dir_;
  std::string index_file_;  // "model.safetensors.index.json" when sharded, else empty
  std::map<std::string, std::string, std::less<>> tensor_to_file_;   // name -> file name
  std::map<std::string, std::vector<std::string>> file_to_tensors_;  // file name -> names (index)
  mutable std::mutex mu_;                                            // guards open_files_
  mutable std::map<std::string, std::unique_ptr<SafetensorsFile>, std::less<>> open_files_;
};

}  // namespace tessera
