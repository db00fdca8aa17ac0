// The golden fixtures on the CPU emulation of bf16 rounding (bf16_emulation.h): shows, without a
// GPU, that a correct bf16 backend meets the end-to-end tolerances the CUDA golden test uses
// (bf16_golden.h), and prints the figures that derive them.
#include <gtest/gtest.h>

#include "tests/golden/bf16_emulation.h"
#include "tests/golden/bf16_golden.h"

namespace tessera {
namespace {

class Bf16EmulationGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(Bf16EmulationGoldenTest, MeetsTheCudaTolerances) {
  testing::Bf16EmulationBackend backend;
  testing::CheckGoldenOnBf16Backend(GetParam(), backend, "bf16 emulation");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Bf16EmulationGoldenTest,
                         ::testing::ValuesIn(testing::GoldenFixtureNames()));

}  // namespace
}  // namespace tessera
