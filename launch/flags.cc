#include "launch/flags.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace tessera {

Flags::Flags(std::set<std::string> value_flags, std::set<std::string> bool_flags)
    : value_flags_(std::move(value_flags)), bool_flags_(std::move(bool_flags)) {}

absl::Status Flags::Parse(int argc, char** argv, int first) {
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) {
      positional_.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (bool_flags_.count(name)) {
      if (value) return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      values_[name] = "true";
    } else if (value_flags_.count(name)) {
      if (!value) {
        if (i + 1 >= argc)
          return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
        value = argv[++i];
      }
      values_[name] = *value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
  }
  return absl::OkStatus();
}

bool Flags::Has(const std::string& name) const { return values_.count(name) > 0; }

std::optional<std::string> Flags::GetString(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<std::string> Flags::RequireString(const std::string& name) const {
  auto value = GetString(name);
  if (!value) return absl::InvalidArgumentError(absl::StrCat("--", name, " is required"));
  return *value;
}

absl::StatusOr<int64_t> Flags::GetInt(const std::string& name, int64_t default_value) const {
  auto value = GetString(name);
  if (!value) return default_value;
  int64_t result;
  if (!absl::SimpleAtoi(*value, &result)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, ": '", *value, "' is not an integer"));
  }
  return result;
}

absl::StatusOr<double> Flags::GetDouble(const std::string& name, double default_value) const {
  auto value = GetString(name);
  if (!value) return default_value;
  double result;
  if (!absl::SimpleAtod(*value, &result) || std::isnan(result)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": '", *value, "' is not a number"));
  }
  return result;
}

absl::StatusOr<std::vector<int64_t>> Flags::GetIntList(const std::string& name) const {
  std::vector<int64_t> result;
  auto value = GetString(name);
  if (!value) return result;
  for (absl::string_view piece : absl::StrSplit(*value, ',', absl::SkipWhitespace())) {
    int64_t v;
    if (!absl::SimpleAtoi(piece, &v)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, ": '", piece, "' is not an integer"));
    }
    result.push_back(v);
  }
  return result;
}

}  // namespace tessera
