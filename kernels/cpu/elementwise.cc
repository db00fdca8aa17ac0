// Embedding lookup, SwiGLU activation, row gather and addition.
#include <cmath>
#include <cstring>

#include "kernels/cpu/reference.h"

namespace tessera::cpu {

void Embedding(const float* table, int64_t vocab_start, int64_t vocab_end, int64_t hidden,
               const int32_t* ids, int n, float* out) {
  for (int t = 0; t < n; ++t) {
    float* row = out + t * hidden;
    if (ids[t] >= vocab_start && ids[t] < vocab_end) {
      std::memcpy(row, table + (ids[t] - vocab_start) * hidden, hidden * sizeof(float));
    } else {
      std::memset(row, 0, hidden * sizeof(float));
    }
  }
}

void SiluMul(const float* gate_up, int64_t m, int64_t intermediate, float* out) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < m; ++r) {
    const float* gate = gate_up + r * 2 * intermediate;
    const float* up = gate + intermediate;
    float* o = out + r * intermediate;
    for (int64_t i = 0; i < intermediate; ++i) {
      const float g = gate[i];
      o[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
  }
}

void GatherRows(const float* x, const int32_t* rows, int r, int64_t dim, float* out) {
  for (int i = 0; i < r; ++i) std::memcpy(out + i * dim, x + rows[i] * dim, dim * sizeof(float));
}

void Add(const float* a, const float* b, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

}  // namespace tessera::cpu
