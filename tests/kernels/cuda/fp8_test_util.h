// Helpers for the FP8 kernel tests and benchmark: random block-scaled e4m3 weights on the host
// (finite bytes, scales around 1e-2) and their upload.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/ops.h"

namespace tessera::testing {

struct HostFp8Weight {
  int64_t n = 0, k = 0, stride = 0;
  std::vector<uint8_t> data;  // e4m3 [n, k]
  std::vector<float> scale;   // [ceil(n/128), stride]; padding columns NaN (never read)
};

inline HostFp8Weight RandomFp8Weight(int64_t n, int64_t k, std::mt19937& rng) {
  HostFp8Weight w;
  w.n = n;
  w.k = k;
  w.stride = Fp8WeightScaleStride(k);
  w.data.resize(n * k);
  for (auto& b : w.data) {
    b = static_cast<uint8_t>(rng() & 0xff);
    if ((b & 0x7f) == 0x7f || (b & 0x78) >= 0x50) b &= 0xc7;  // |w| < 16, never NaN
  }
  std::uniform_real_distribution<float> s(0.5e-2f, 2e-2f);
  w.scale.assign(Fp8Blocks(n) * w.stride, NAN);
  for (int64_t i = 0; i < Fp8Blocks(n); ++i)
    for (int64_t g = 0; g < Fp8Blocks(k); ++g) w.scale[i * w.stride + g] = s(rng);
  return w;
}

// The weight's bytes and scales on the backend's device.
struct DeviceFp8Weight {
  DeviceBuffer data, scale;
  Fp8Weight view(int64_t stride) const { return {data.data(), scale.as<float>(), stride}; }
};

inline DeviceFp8Weight UploadFp8Weight(Backend& b, const HostFp8Weight& w) {
  DeviceFp8Weight d;
  d.data = b.Allocate(w.data.size());
  b.CopyToDevice(d.data.data(), w.data.data(), w.data.size());
  d.scale = b.Allocate(w.scale.size() * sizeof(float));
  b.CopyToDevice(d.scale.data(), w.scale.data(), w.scale.size() * sizeof(float));
  return d;
}

}  // namespace tessera::testing
