// launch/cli: numeric flag values CLI11 would take but tessera refuses (nan, inf, integers past
// 64 bits that CLI11 clamps, negative unsigned values, octal-looking leading zeros), and the
// values that stay valid.
#include "launch/cli.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace tessera {
namespace {

struct Flags {
  double seconds = 30;
  double ratio = 0.5;
  int count = 4;
  int64_t big = 0;
  uint64_t seed = 0;
  std::string name;
  std::string rate = "inf";  // a text option with a non-finite default (bench-serve's)
};

// Parses `tessera test ARGS...`; the exit code when parsing ends the command (nullopt: go on).
std::optional<int> Parse(std::vector<std::string> args, Flags* f) {
  std::unique_ptr<CLI::App> app = NewCommandLine("test", "a test");
  app->add_option("--seconds", f->seconds, "a double with a type name")->type_name("SECONDS");
  app->add_option("--ratio", f->ratio, "a double");
  app->add_option("--count", f->count, "an int");
  app->add_option("--big", f->big, "an int64");
  app->add_option("--seed", f->seed, "a uint64");
  app->add_option("--name", f->name, "a string");
  app->add_option("--rate", f->rate, "a number or inf")->capture_default_str();
  args.insert(args.begin(), {"tessera", "test"});
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return ParseCommandLine(*app, static_cast<int>(argv.size()), argv.data(), /*print=*/false);
}

TEST(CliTest, RefusesNonFiniteAndOutOfRangeNumbers) {
  const std::vector<std::vector<std::string>> bad = {
      {"--seconds", "nan"},
      {"--seconds", "inf"},
      {"--ratio", "-inf"},
      {"--ratio", "NaN"},
      {"--ratio", "1e999"},
      {"--big", "99999999999999999999"},
      {"--big", "-99999999999999999999"},
      {"--count", "99999999999"},
      {"--seed", "-1"},
      {"--seed", "18446744073709551616"},
      {"--count", "010"},
      {"--count", "x"},
      {"--ratio=nan"},
  };
  for (const auto& args : bad) {
    Flags f;
    EXPECT_EQ(Parse(args, &f), 2) << args[0] << " " << args.back();
  }
}

TEST(CliTest, KeepsValidNumbers) {
  Flags f;
  EXPECT_EQ(Parse({"--seconds", "2.5", "--ratio", "1e-3", "--count", "-7", "--big",
                   "9223372036854775807", "--seed", "18446744073709551615", "--name", "nan"},
                  &f),
            std::nullopt);
  EXPECT_EQ(f.seconds, 2.5);
  EXPECT_EQ(f.ratio, 1e-3);
  EXPECT_EQ(f.count, -7);
  EXPECT_EQ(f.big, INT64_MAX);
  EXPECT_EQ(f.seed, UINT64_MAX);
  EXPECT_EQ(f.name, "nan");  // strings are not numbers
  Flags zero;
  EXPECT_EQ(Parse({"--count", "0", "--ratio", "0.25", "--seconds", "0"}, &zero), std::nullopt);
  EXPECT_EQ(zero.count, 0);
  // bench-serve's --request-rate: text whose default is "inf" (a burst) takes "inf" and numbers.
  Flags burst;
  EXPECT_EQ(Parse({"--rate", "inf"}, &burst), std::nullopt);
  EXPECT_EQ(burst.rate, "inf");
  EXPECT_EQ(Parse({"--rate", "8.5"}, &burst), std::nullopt);
  EXPECT_EQ(burst.rate, "8.5");
}

TEST(CliTest, BytesAreFinite) {
  EXPECT_FALSE(ParseBytes("inf").ok());
  EXPECT_FALSE(ParseBytes("nan").ok());
  EXPECT_FALSE(ParseBytes("1e30GiB").ok());
  EXPECT_EQ(*ParseBytes("2GiB"), int64_t{2} << 30);
}

}  // namespace
}  // namespace tessera
