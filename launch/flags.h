// A small command-line parser for the tessera subcommands.
//
// Accepts `--name value`, `--name=value` and boolean `--name`. Unknown flags, missing values and
// malformed numbers are errors that name the flag, so a typo never silently falls back to a
// default.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera {

class Flags {
 public:
  // `value_flags` take a value; `bool_flags` do not. Names are given without the leading "--".
  Flags(std::set<std::string> value_flags, std::set<std::string> bool_flags);

  // Parses argv[first..argc). Positional arguments are collected in positional().
  absl::Status Parse(int argc, char** argv, int first);

  bool Has(const std::string& name) const;
  bool GetBool(const std::string& name) const { return Has(name); }
  std::optional<std::string> GetString(const std::string& name) const;
  absl::StatusOr<std::string> RequireString(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t default_value) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double default_value) const;
  // A comma-separated list of integers, e.g. "--prompt-ids 1,2,3".
  absl::StatusOr<std::vector<int64_t>> GetIntList(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::set<std::string> value_flags_;
  std::set<std::string> bool_flags_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

}  // namespace tessera
