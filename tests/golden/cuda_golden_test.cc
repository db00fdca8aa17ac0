// The golden fixtures (transformers' fp32 logits and greedy tokens) through Executor + Generate
// on the CUDA backend, with the bf16 tolerances derived in bf16_golden.h; also with chunked
// prefill over blocks that do not align with the chunks. Skips itself without a GPU.
#include <gtest/gtest.h>

#include "tests/golden/bf16_golden.h"

namespace tessera {
namespace {

class CudaGoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device: the CUDA backend is not run";
    backend_ = MakeCudaBackend(0);
  }
  std::unique_ptr<Backend> backend_;
};

TEST_P(CudaGoldenTest, PromptLogitsAndGreedyTokens) {
  testing::CheckGoldenOnBf16Backend(GetParam(), *backend_, "cuda");
}

TEST_P(CudaGoldenTest, ChunkedPrefillOnUnalignedBlocks) {
  testing::CheckGoldenOnBf16Backend(GetParam(), *backend_, "cuda chunked", /*prefill_chunk=*/7,
                                    /*block_size=*/5);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaGoldenTest,
                         ::testing::ValuesIn(testing::GoldenFixtureNames()));

}  // namespace
}  // namespace tessera
