// std::string_view <-> absl::string_view, the one shim every module uses.
//
// Debian 12's Abseil is built with ABSL_OPTION_USE_STD_STRING_VIEW 0: absl::string_view is a type
// of its own, so absl::StrCat, absl::Status payloads and the lookups of absl's hash maps do not
// take a std::string_view, and absl::Status::message() does not give one. Our code uses
// std::string_view throughout and converts at those calls. Both directions are free (a pointer and
// a length).
#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace tessera {

inline absl::string_view AbslView(std::string_view s) { return {s.data(), s.size()}; }
inline std::string_view StdView(absl::string_view s) { return {s.data(), s.size()}; }

}  // namespace tessera
