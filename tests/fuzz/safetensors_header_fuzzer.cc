// libFuzzer target: whole safetensors file images (8-byte length prefix, JSON header, data) through
// ParseSafetensorsImage, the validation SafetensorsFile::Open runs on a mapped file.
//
// Beyond "no crash, no sanitizer report", it checks what acceptance promises: every tensor lies
// inside the image with exactly dtype size x elements bytes, and the float ones convert (reading
// every byte of their span, under AddressSanitizer). A rejection must name the file.
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "runtime/model/safetensors.h"

namespace {

constexpr char kFileName[] = "fuzz.safetensors";

void Require(bool condition) {
  if (!condition) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using tessera::DType;
  const auto image = tessera::ParseSafetensorsImage(absl::MakeConstSpan(data, size), kFileName);
  if (!image.ok()) {
    Require(image.status().message().substr(0, sizeof(kFileName) - 1) == kFileName);
    return 0;
  }
  Require(image->data_offset >= 8 && image->data_offset <= size);
  const uint8_t* region = data + image->data_offset;
  const uint64_t region_size = size - image->data_offset;
  uint64_t covered = 0;
  for (const tessera::TensorInfo& t : image->header.tensors) {
    Require(t.data_begin <= t.data_end && t.data_end <= region_size);
    Require(t.data_begin >= covered || t.data_begin == t.data_end);  // sorted, no overlap
    covered = std::max(covered, t.data_end);
    const int64_t count = t.num_elements();
    Require(count >= 0);
    Require(static_cast<uint64_t>(count) * tessera::DTypeSize(t.dtype) ==
            t.data_end - t.data_begin);
    if (t.dtype == DType::kI32 || t.dtype == DType::kI64) continue;
    float buffer[1024];
    for (int64_t done = 0; done < count;) {
      const int64_t n = std::min<int64_t>(count - done, 1024);
      tessera::ConvertToFloat(t.dtype, region + t.data_begin + done * tessera::DTypeSize(t.dtype),
                              static_cast<size_t>(n), buffer);
      done += n;
    }
  }
  Require(covered == region_size);
  return 0;
}
