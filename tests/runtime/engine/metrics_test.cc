// Metrics' rendering of expert-parallel load: absent until set, then one counter per expert and
// per EP rank, replaced (not added to) by each update, as the engine passes running totals. The
// step device time is a histogram apart from the step time.
#include "runtime/engine/metrics.h"

#include <gtest/gtest.h>

namespace tessera {
namespace {

TEST(MetricsTest, ExpertLoadRenderedOnlyOnceSet) {
  Metrics metrics;
  EXPECT_EQ(metrics.Render().find("moe_"), std::string::npos);
  metrics.SetExpertLoad({5, 0, 7}, {9, 3});
  metrics.SetExpertLoad({6, 1, 7}, {10, 4});
  const std::string text = metrics.Render();
  EXPECT_NE(text.find("# TYPE tessera:moe_expert_tokens_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("tessera:moe_expert_tokens_total{expert=\"0\"} 6\n"), std::string::npos);
  EXPECT_NE(text.find("tessera:moe_expert_tokens_total{expert=\"2\"} 7\n"), std::string::npos);
  EXPECT_NE(text.find("tessera:moe_rank_tokens_total{ep_rank=\"1\"} 4\n"), std::string::npos);
  EXPECT_EQ(text.find("{expert=\"3\"}"), std::string::npos);
}

TEST(MetricsTest, StepDeviceTimeIsItsOwnHistogram) {
  Metrics metrics;
  metrics.ObserveEngineStep(0.010);
  metrics.ObserveEngineStepDevice(0.004);
  metrics.ObserveEngineStepDevice(0.003);
  const std::string text = metrics.Render();
  EXPECT_NE(text.find("# TYPE tessera:engine_step_device_seconds histogram\n"), std::string::npos);
  EXPECT_NE(text.find("tessera:engine_step_device_seconds_sum{model_name=\"tessera\"} 0.007\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("tessera:engine_step_device_seconds_count{model_name=\"tessera\"} 2\n"),
            std::string::npos);
  EXPECT_NE(text.find("tessera:engine_step_seconds_count{model_name=\"tessera\"} 1\n"),
            std::string::npos);
}

}  // namespace
}  // namespace tessera
