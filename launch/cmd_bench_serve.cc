// tessera bench-serve: a serving benchmark through a running `tessera serve` (rpc/bench_serve.h),
// as `vllm bench serve` is one: Poisson arrivals at --request-rate (inf = a burst) or a
// --max-concurrency cap, seeded synthetic lengths, TTFT / TPOT / ITL / e2e percentiles, goodput
// under SLOs, and, with --metrics-address, the engine's own bound and efficiency.
//
//   tessera bench-serve --address HOST:PORT [--request-rate R | --max-concurrency C]
//       [--num-prompts N] [--warmup N] [--input-len L --output-len L | --input-mean M
//       --output-mean M] [--seed S] [--slo-ttft-ms T] [--slo-tpot-ms T]
//       [--metrics-address HOST:PORT] [--api-key K] [--tls-ca F] [--json]
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "absl/strings/numbers.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "rpc/bench_serve.h"

namespace tessera {

int BenchServeCommand(int argc, char** argv) {
  BenchServeOptions o;
  std::string rate = "inf";
  bool json = false;
  std::unique_ptr<CLI::App> app = NewCommandLine(
      "bench-serve", "Benchmark a running server: throughput and TTFT/TPOT/ITL percentiles.");
  app->add_option("--address", o.client.address, "the server's gRPC address")
      ->type_name("HOST:PORT")
      ->capture_default_str();
  app->add_option("--api-key", o.client.api_key, "sent as 'authorization: Bearer K'");
  app->add_option("--tls-ca", o.client.tls_ca, "use TLS, trusting this CA (PEM file)");
  app->add_option("--request-rate", rate, "requests per second, Poisson arrivals; inf = a burst")
      ->capture_default_str();
  app->add_option("--max-concurrency", o.max_concurrency, "requests in flight at most (0 = no cap)")
      ->capture_default_str();
  app->add_option("--num-prompts", o.num_prompts, "requests measured")->capture_default_str();
  app->add_option("--warmup", o.warmup_prompts, "requests sent first, one at a time, not counted")
      ->capture_default_str();
  app->add_option("--input-len", o.input_len, "fixed prompt length (0 = log-normal)")
      ->capture_default_str();
  app->add_option("--output-len", o.output_len, "fixed output length (0 = log-normal)")
      ->capture_default_str();
  app->add_option("--input-mean", o.input_mean, "mean prompt length, log-normal (ShareGPT-like)")
      ->capture_default_str();
  app->add_option("--output-mean", o.output_mean, "mean output length, log-normal")
      ->capture_default_str();
  app->add_option("--seed", o.seed, "seed of lengths and prompt ids")->capture_default_str();
  app->add_option("--slo-ttft-ms", o.slo_ttft_ms, "goodput: TTFT bound in ms (0 = none)")
      ->capture_default_str();
  app->add_option("--slo-tpot-ms", o.slo_tpot_ms, "goodput: TPOT bound in ms (0 = none)")
      ->capture_default_str();
  app->add_option("--metrics-address", o.metrics_address,
                  "the server's /metrics HOST:PORT: prints the engine's bound and efficiency")
      ->type_name("HOST:PORT");
  app->add_flag("--json", json, "print one JSON object instead of the table");
  if (std::optional<int> code = ParseCommandLine(*app, argc, argv)) return *code;
  if (rate == "inf") {
    o.request_rate = std::numeric_limits<double>::infinity();
  } else if (!absl::SimpleAtod(rate, &o.request_rate) || !(o.request_rate > 0)) {
    std::fprintf(stderr, "tessera bench-serve: --request-rate must be 'inf' or > 0, got %s\n",
                 rate.c_str());
    return 2;
  }
  absl::StatusOr<BenchServeResult> result = RunBenchServe(o);
  if (!result.ok()) {
    std::fprintf(stderr, "tessera bench-serve: %s\n",
                 std::string(result.status().message()).c_str());
    return 1;
  }
  const std::string text = json ? BenchServeJson(o, *result) : BenchServeReport(o, *result);
  std::printf("%s\n", text.c_str());
  return result->failed == 0 ? 0 : 3;
}

}  // namespace tessera
