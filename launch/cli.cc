#include "launch/cli.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace tessera {
namespace {

size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1] ? 1 : 0)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// "unknown flag --tepmerature (did you mean --temperature?)", one per unexpected argument.
std::string DescribeExtras(const CLI::App& app, const std::vector<std::string>& extras) {
  std::vector<std::string> parts;
  bool after_unknown_flag = false;  // the next argument is most likely its value
  for (const std::string& extra : extras) {
    const bool value = after_unknown_flag && extra.compare(0, 1, "-") != 0;
    after_unknown_flag = false;
    if (value) continue;
    if (extra.size() > 2 && extra.compare(0, 2, "--") == 0) {
      after_unknown_flag = extra.find('=') == std::string::npos;
      const std::string name = extra.substr(0, extra.find('='));
      const std::string nearest = NearestFlag(app, name);
      parts.push_back(nearest.empty()
                          ? absl::StrCat("unknown flag ", name)
                          : absl::StrCat("unknown flag ", name, " (did you mean ", nearest, "?)"));
    } else {
      parts.push_back(absl::StrCat("unexpected argument '", extra, "'"));
    }
  }
  return absl::StrJoin(parts, "; ");
}

// NOTE: CLI11 2.1 reads numbers with strtold/strtoll: it takes "nan" and "inf" for a float, a
// too-large integer silently becomes INT64_MAX (int64 flags), "-1" a huge unsigned, and "010" is
// octal 8. The check below refuses those before CLI11 converts; "" means the value is fine (or
// not a number at all, which CLI11's own conversion reports).
std::string CheckNumber(const std::string& value, bool is_unsigned) {
  const char* begin = value.c_str();
  char* end = nullptr;
  const double d = std::strtod(begin, &end);
  if (end == begin || *end != '\0') return "";
  if (!std::isfinite(d)) return absl::StrCat("'", value, "' is not a finite number");
  size_t digits = value.find_first_not_of("+-");
  const bool integer = digits <= 1 && digits < value.size() &&
                       value.find_first_not_of("0123456789", digits) == std::string::npos;
  if (!integer) return "";
  if (is_unsigned && value[0] == '-') return absl::StrCat("'", value, "' is negative");
  if (value[digits] == '0' && value.size() > digits + 1) {
    return absl::StrCat("'", value, "' has a leading zero (write the number in decimal)");
  }
  errno = 0;
  if (value[0] == '-') {
    (void)std::strtoll(begin, &end, 10);
  } else {
    (void)std::strtoull(begin, &end, 10);
  }
  if (errno == ERANGE) return absl::StrCat("'", value, "' is out of range");
  return "";
}

// A numeric option: CLI11's type for it, or (for those given another type name, e.g. SECONDS)
// a default that is a number.
bool IsNumeric(const CLI::Option& option) {
  const std::string type = option.get_type_name();
  if (type == "INT" || type == "UINT" || type == "FLOAT" || type == "NUMBER") return true;
  // A text option whose default reads as a non-finite number (bench-serve's --request-rate,
  // default "inf" = a burst) takes such words on purpose: it is not checked as a number.
  double v;
  return !option.get_default_str().empty() && absl::SimpleAtod(option.get_default_str(), &v) &&
         std::isfinite(v);
}

}  // namespace

std::unique_ptr<CLI::App> NewCommandLine(const std::string& command,
                                         const std::string& description) {
  auto app = std::make_unique<CLI::App>(description, "tessera " + command);
  // --help shows each flag's default; `--x 1 --x 2` means 2, as with most command lines.
  app->option_defaults()->always_capture_default()->multi_option_policy(
      CLI::MultiOptionPolicy::TakeLast);
  app->get_formatter()->column_width(44);
  return app;
}

std::optional<int> ParseCommandLine(CLI::App& app, int argc, char** argv, bool print) {
  std::vector<std::string> args(argv + std::min(argc, 2), argv + argc);
  std::reverse(args.begin(), args.end());  // CLI11 takes them last first
  for (CLI::Option* option : app.get_options()) {
    if (option->get_expected_min() < 1 || !IsNumeric(*option)) continue;
    const bool is_unsigned = option->get_type_name() == "UINT";
    option->check(CLI::Validator(
        [is_unsigned](std::string& value) { return CheckNumber(value, is_unsigned); }, "", ""));
  }
  try {
    app.parse(args);
  } catch (const CLI::CallForHelp&) {
    if (print) std::cout << app.help() << std::flush;
    return 0;
  } catch (const CLI::ExtrasError& e) {
    if (print) {
      std::fprintf(stderr, "%s: %s\nRun with --help for the flags.\n", app.get_name().c_str(),
                   DescribeExtras(app, app.remaining()).c_str());
    }
    return 2;
  } catch (const CLI::ParseError& e) {
    if (print) {
      std::fprintf(stderr, "%s: %s\nRun with --help for the flags.\n", app.get_name().c_str(),
                   e.what());
    }
    return 2;
  }
  return std::nullopt;
}

std::string NearestFlag(const CLI::App& app, const std::string& unknown) {
  std::string best;
  size_t best_distance = SIZE_MAX;
  for (const CLI::Option* option : app.get_options()) {
    for (const std::string& name : option->get_lnames()) {
      const std::string flag = "--" + name;
      const size_t d = EditDistance(unknown, flag);
      if (d < best_distance) {
        best_distance = d;
        best = flag;
      }
    }
  }
  // Close enough to be a typo: a few edits, and not most of the name.
  if (best_distance > std::max<size_t>(2, unknown.size() / 3)) return "";
  return best;
}

absl::StatusOr<int64_t> ParseBytes(const std::string& text) {
  static const struct {
    const char* suffix;
    double scale;
  } kUnits[] = {{"GiB", 1024.0 * 1024 * 1024},
                {"MiB", 1024.0 * 1024},
                {"KiB", 1024.0},
                {"GB", 1e9},
                {"MB", 1e6},
                {"KB", 1e3},
                {"B", 1.0},
                {"", 1.0}};
  for (const auto& unit : kUnits) {
    const std::string suffix = unit.suffix;
    if (text.size() < suffix.size() ||
        text.compare(text.size() - suffix.size(), suffix.size(), suffix))
      continue;
    double value;
    if (absl::SimpleAtod(text.substr(0, text.size() - suffix.size()), &value) && value > 0 &&
        value * unit.scale < 9e18) {
      return static_cast<int64_t>(value * unit.scale);
    }
    break;
  }
  return absl::InvalidArgumentError(absl::StrCat("cannot read '", text, "' as a size"));
}

absl::StatusOr<std::vector<int64_t>> ParseIntList(const std::string& text) {
  std::vector<int64_t> result;
  for (absl::string_view piece : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int64_t v;
    if (!absl::SimpleAtoi(piece, &v)) {
      return absl::InvalidArgumentError(absl::StrCat("'", piece, "' is not an integer"));
    }
    result.push_back(v);
  }
  return result;
}

CLI::Option* AddIntListFlag(CLI::App& app, const std::string& name, std::vector<int64_t>* out,
                            const std::string& help) {
  CLI::Option* option = app.add_option_function<std::string>(
      name,
      [out, name](const std::string& text) {
        absl::StatusOr<std::vector<int64_t>> list = ParseIntList(text);
        if (!list.ok()) throw CLI::ValidationError(name, std::string(list.status().message()));
        *out = std::move(*list);
      },
      help);
  option->type_name("LIST");
  if (!out->empty()) option->default_str(absl::StrJoin(*out, ","));
  return option;
}

CLI::Option* AddBytesFlag(CLI::App& app, const std::string& name, int64_t* out,
                          const std::string& help) {
  CLI::Option* option = app.add_option_function<std::string>(
      name,
      [out, name](const std::string& text) {
        absl::StatusOr<int64_t> bytes = ParseBytes(text);
        if (!bytes.ok()) throw CLI::ValidationError(name, std::string(bytes.status().message()));
        *out = *bytes;
      },
      help);
  option->type_name("BYTES");
  return option;
}

}  // namespace tessera
