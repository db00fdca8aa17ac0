// Linear (y = x W^T): the CPU reference matrix product.
#include <algorithm>

#include "kernels/cpu/reference.h"

namespace tessera::cpu {

namespace {
// NOTE: 8 independent partial sums let the compiler vectorise the dot product without
// -ffast-math; the summation order is fixed, so results do not depend on the thread count.
inline float Dot(const float* a, const float* b, int64_t k) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < k; ++i) sum += a[i] * b[i];
  return sum;
}
}  // namespace

void Linear(const float* x, const float* w, int64_t m, int64_t n, int64_t k, float* y) {
  // Tile over (rows of x) x (rows of w) so a block of w stays in cache across rows of x.
  constexpr int64_t kRowTile = 16;
  constexpr int64_t kColTile = 64;
  const int64_t col_tiles = (n + kColTile - 1) / kColTile;
#pragma omp parallel for schedule(static)
  for (int64_t ct = 0; ct < col_tiles; ++ct) {
    const int64_t j0 = ct * kColTile;
    const int64_t j1 = std::min(n, j0 + kColTile);
    for (int64_t i0 = 0; i0 < m; i0 += kRowTile) {
      const int64_t i1 = std::min(m, i0 + kRowTile);
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = j0; j < j1; ++j) y[i * n + j] = Dot(x + i * k, w + j * k, k);
      }
    }
  }
}

}  // namespace tessera::cpu
