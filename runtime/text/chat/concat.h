// String concatenation for the chat module.
//
// The Abseil this project builds against keeps its own absl::string_view type, so absl::StrCat
// does not accept std::string_view, which this module uses throughout (kernels/base/string_view.h).
// Concat accepts strings, string views, characters and integers.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include "absl/strings/string_view.h"
#include "kernels/base/string_view.h"

namespace tessera::jinja {
namespace concat_internal {

inline void Append(std::string* out, std::string_view s) { out->append(s.data(), s.size()); }
inline void Append(std::string* out, const char* s) { out->append(s); }
inline void Append(std::string* out, absl::string_view s) { out->append(s.data(), s.size()); }
inline void Append(std::string* out, const std::string& s) { out->append(s); }
template <typename T,
          typename = std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, char> &&
                                      !std::is_same_v<T, bool>>>
void Append(std::string* out, T v) {
  out->append(std::to_string(v));
}

}  // namespace concat_internal

template <typename... Args>
std::string Concat(const Args&... args) {
  std::string out;
  (concat_internal::Append(&out, args), ...);
  return out;
}

template <typename... Args>
void AppendTo(std::string* out, const Args&... args) {
  (concat_internal::Append(out, args), ...);
}

}  // namespace tessera::jinja
