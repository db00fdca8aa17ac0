// Synthetic request lengths shared by `tessera bench` (launch/cmd_bench.cc) and `tessera
// bench-serve` (rpc/bench_serve.cc): log-normal around a mean with sigma 1, the way ShareGPT's
// prompt and output lengths spread. Header-only: the one parametrisation both draw from.
#pragma once

#include <cmath>
#include <random>

namespace tessera {

// mu = ln(mean) - sigma^2 / 2 with sigma = 1, so that the draws average `mean`.
inline std::lognormal_distribution<double> LogNormalLengths(double mean) {
  return std::lognormal_distribution<double>(std::log(mean) - 0.5, 1.0);
}

}  // namespace tessera
